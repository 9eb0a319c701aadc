// The sign-up and log-in forms. The rules mirror the server's (shared/reference/better-auth-wire.md 2.2,
// 2.4) so people learn about a mistake before a round trip; the server still decides, and whatever it
// answers is shown above the form.
"use strict";

(() => {
  // The email pattern the server applies (zod's, as Better Auth uses): a dot-free start, no "..",
  // a dotted domain and a top-level domain of two letters or more.
  const EMAIL = /^(?!\.)(?!.*\.\.)[A-Za-z0-9_'+\-.]*[A-Za-z0-9_+-]@(?:[A-Za-z0-9][A-Za-z0-9-]*\.)+[A-Za-z]{2,}$/;
  const MIN_PASSWORD = 8;
  const MAX_PASSWORD = 128;

  const form = document.getElementById("auth-form");
  const signUp = form.dataset.mode === "sign-up";
  const endpoint = signUp ? "/api/auth/sign-up/email" : "/api/auth/sign-in/email";
  const submit = form.querySelector('button[type="submit"]');
  const banner = document.getElementById("form-error");
  const email = form.elements.email;
  const password = form.elements.password;

  // Sign-up enforces 8-128 characters. Sign-in enforces only the maximum and answers a short password
  // with "Invalid email or password" (reference 2.4), so the log-in form asks only for a non-empty one.
  // Length is counted as JavaScript counts it (UTF-16 units), as the server does (reference 2.11).
  const rules = {
    email(value) {
      if (!value.trim()) return "Enter your email address.";
      if (!EMAIL.test(value.trim())) return "Enter a valid email address, like name@example.com.";
      return "";
    },
    password(value) {
      if (!value) return signUp ? "Choose a password." : "Enter your password.";
      if (signUp && value.length < MIN_PASSWORD) return `Use at least ${MIN_PASSWORD} characters.`;
      if (value.length > MAX_PASSWORD) return `Use at most ${MAX_PASSWORD} characters.`;
      return "";
    },
  };

  function showFieldError(input, message) {
    const slot = document.getElementById(`${input.id}-error`);
    slot.textContent = message;
    slot.hidden = !message;
    input.setAttribute("aria-invalid", String(Boolean(message)));
  }

  function validate(input) {
    const message = rules[input.name](input.value);
    showFieldError(input, message);
    return !message;
  }

  function showBanner(message) {
    banner.textContent = message;
    banner.hidden = !message;
  }

  // Fields are checked on submit, not when left: a message appearing on blur moves the button away from
  // under a pointer that is pressing it, and the click is lost. Once a field shows an error it is
  // re-checked as it is typed in, so the message goes away as soon as the value is fixed.
  for (const input of [email, password]) {
    input.addEventListener("input", () => {
      if (input.getAttribute("aria-invalid") === "true") validate(input);
    });
  }

  for (const toggle of form.querySelectorAll(".reveal")) {
    toggle.addEventListener("click", () => {
      const target = document.getElementById(toggle.getAttribute("aria-controls"));
      const reveal = target.type === "password";
      target.type = reveal ? "text" : "password";
      toggle.textContent = reveal ? "Hide" : "Show";
      toggle.setAttribute("aria-pressed", String(reveal));
    });
  }

  let busy = false;

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy) return;
    showBanner("");
    const invalid = [email, password].filter((input) => !validate(input));
    if (invalid.length > 0) {
      invalid[0].focus();
      return;
    }

    const body = { email: email.value.trim(), password: password.value };
    if (signUp) body.name = form.elements.name.value.trim();
    else body.rememberMe = form.elements.rememberMe.checked;

    busy = true;
    Edge.setBusy(submit, true);
    let response;
    try {
      response = await fetch(endpoint, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
    } catch {
      response = null;
    }
    if (response && response.ok) {
      // replace(): the back button from the tasks page should not lead to a filled-in form.
      location.replace("/tasks");
      return;
    }
    showBanner(response ? await Edge.errorMessage(response) : Edge.NETWORK_MESSAGE);
    busy = false;
    Edge.setBusy(submit, false);
    if (response && response.status === 401) {
      password.focus();
      password.select();
    } else if (response && response.status === 422) {
      email.focus();
    }
  });

  // Coming back through the back/forward cache must not leave the button spinning.
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) {
      busy = false;
      Edge.setBusy(submit, false);
    }
  });
})();
