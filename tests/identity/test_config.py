"""identity.config: every setting, its default, and every problem reported at once."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from identity.config import DEV_SECRET, ConfigError, load_config, origin_of

GOOD_SECRET = "k7Jd9-2mQx_8vLpR4tYw1zNc6bHs3fGa0eUi"


def test_defaults():
    config = load_config({"IDENTITY_SECRET": GOOD_SECRET})
    assert config.database_url == "sqlite+aiosqlite:///data/identity.db"
    assert config.env == "production"
    assert config.base_url == "http://127.0.0.1:8000"
    assert config.origin == "http://127.0.0.1:8000"
    assert config.trusted_origins == ()
    assert config.all_trusted_origins == ("http://127.0.0.1:8000",)
    assert config.jwt_alg == "EdDSA"
    assert config.jwt_ttl == 900
    assert config.key_publish_delay == 360
    assert config.trusted_proxies == ()
    assert config.rate_limit_enabled is True
    assert (config.rate_limit_window, config.rate_limit_per_address, config.rate_limit_per_account) == (60, 10, 5)
    assert config.hash_concurrency >= 1
    assert config.secure_cookies is False
    assert config.revocation_feed_token is None


def test_everything_set():
    config = load_config(
        {
            "IDENTITY_SECRET": GOOD_SECRET,
            "IDENTITY_DATABASE_URL": "postgresql://u@db/identity",
            "IDENTITY_BASE_URL": "https://Example.test:443/app",
            "IDENTITY_TRUSTED_ORIGINS": " https://a.test/ , http://localhost:3000",
            "IDENTITY_JWT_ALG": "RS256",
            "IDENTITY_JWT_TTL": "300",
            "IDENTITY_KEY_PUBLISH_DELAY": "0",
            "IDENTITY_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1, 2001:db8::/32",
            "IDENTITY_RATE_LIMIT": "off",
            "IDENTITY_HASH_CONCURRENCY": "3",
            "IDENTITY_REVOCATION_FEED_TOKEN": " Wq3-fR8_zL1xN6vB0kJ5tH2yC9mD4sGaPeUo7iTr ",
        }
    )
    assert config.database_url == "postgresql://u@db/identity"
    assert config.origin == "https://example.test"
    assert config.secure_cookies is True
    assert config.trusted_origins == ("https://a.test", "http://localhost:3000")
    assert config.jwt_alg == "RS256" and config.jwt_ttl == 300 and config.key_publish_delay == 0
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.1/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert config.rate_limit_enabled is False
    assert config.hash_concurrency == 3
    assert config.revocation_feed_token == "Wq3-fR8_zL1xN6vB0kJ5tH2yC9mD4sGaPeUo7iTr"  # surrounding blanks dropped


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        pytest.param({"IDENTITY_SECRET": ""}, "IDENTITY_SECRET is not set", id="missing secret"),
        pytest.param({"IDENTITY_SECRET": "short"}, "IDENTITY_SECRET is 5 characters", id="short secret"),
        pytest.param({"IDENTITY_SECRET": "a" * 40}, "fewer than 8 distinct", id="low-entropy secret"),
        pytest.param({"IDENTITY_ENV": "staging"}, "IDENTITY_ENV='staging'", id="unknown env"),
        pytest.param({"IDENTITY_JWT_ALG": "HS256"}, "IDENTITY_JWT_ALG='HS256'", id="symmetric alg refused"),
        pytest.param({"IDENTITY_JWT_TTL": "soon"}, "IDENTITY_JWT_TTL='soon' is not an integer", id="ttl not int"),
        pytest.param({"IDENTITY_JWT_TTL": "5"}, "IDENTITY_JWT_TTL=5 is outside", id="ttl too small"),
        pytest.param({"IDENTITY_BASE_URL": "127.0.0.1:8000"}, "IDENTITY_BASE_URL", id="base url without scheme"),
        pytest.param({"IDENTITY_TRUSTED_ORIGINS": "ftp://x"}, "IDENTITY_TRUSTED_ORIGINS entry", id="bad origin"),
        pytest.param({"IDENTITY_TRUSTED_PROXIES": "10.0.0.0/33"}, "IDENTITY_TRUSTED_PROXIES entry", id="bad cidr"),
        pytest.param({"IDENTITY_RATE_LIMIT": "maybe"}, "IDENTITY_RATE_LIMIT='maybe'", id="bad switch"),
        pytest.param(
            {"IDENTITY_REVOCATION_FEED_TOKEN": "short-token"},
            "IDENTITY_REVOCATION_FEED_TOKEN is 11 characters",
            id="feed token too short",
        ),
        pytest.param(
            {"IDENTITY_REVOCATION_FEED_TOKEN": "a" * 40},
            "IDENTITY_REVOCATION_FEED_TOKEN has fewer than 8 distinct",
            id="feed token low entropy",
        ),
        pytest.param(
            {"IDENTITY_REVOCATION_FEED_TOKEN": "Wq3-fR8_zL1xN6vB0 kJ5tH2yC9mD4sGaPeUo7iTr"},
            "IDENTITY_REVOCATION_FEED_TOKEN must be visible ASCII",
            id="feed token with a space",
        ),
        pytest.param(
            {"IDENTITY_REVOCATION_FEED_TOKEN": "Wq3-fR8_zL1xN6vB0\u00e9kJ5tH2yC9mD4sGaPeUo7iTr"},
            "IDENTITY_REVOCATION_FEED_TOKEN must be visible ASCII",
            id="feed token not ASCII",
        ),
    ],
)
def test_problems(environ, problem):
    environ = {"IDENTITY_SECRET": GOOD_SECRET, **environ}
    with pytest.raises(ConfigError) as caught:
        load_config(environ)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_all_problems_at_once():
    with pytest.raises(ConfigError) as caught:
        load_config({"IDENTITY_JWT_ALG": "none", "IDENTITY_JWT_TTL": "x", "IDENTITY_TRUSTED_PROXIES": "nope"})
    assert len(caught.value.problems) == 4


def test_development_uses_dev_secret_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="identity"):
        config = load_config({"IDENTITY_ENV": "development"})
    assert config.secret == DEV_SECRET
    assert "PUBLIC development secret" in caplog.text


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("HTTPS://EXAMPLE.test:443/x?y", "https://example.test"),
        ("http://example.test:80", "http://example.test"),
        ("http://[::1]:8000/", "http://[::1]:8000"),
    ],
)
def test_origin_of(url, origin):
    assert origin_of(url) == origin
