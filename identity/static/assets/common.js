// Shared by the pages: turning an error response into a sentence a person can act on, and the
// button loading state. A classic script that defines one global, `Edge`, so auth.js and tasks.js
// need no module loader and no build step (issue 6).
"use strict";

window.Edge = (() => {
  const NETWORK_MESSAGE = "Could not reach the server. Check your connection and try again.";
  const RATE_LIMIT_MESSAGE = "Too many requests. Please try again later.";

  // Better Auth prefixes validation messages with the field path: "[body.email] Invalid email address"
  // (shared/reference/better-auth-wire.md 2.4). People do not need the path.
  function tidy(message) {
    return message.replace(/\[body(?:\.[\w.]+)?\]\s*/g, "").trim();
  }

  function sentence(text) {
    const trimmed = text.trim();
    return trimmed ? trimmed[0].toUpperCase() + trimmed.slice(1) : "";
  }

  // The bodies we meet: identity's `{message, code}` (reference 2.4); the tasks backend's and the
  // gateway's `{error, message}`, where a 422 adds `fields: {name: problem}` naming each bad field.
  function messageOf(body) {
    if (!body || typeof body !== "object") return "";
    if (body.fields && typeof body.fields === "object" && Object.keys(body.fields).length > 0) {
      return Object.entries(body.fields)
        .map(([field, problem]) => sentence(`${field.replace(/_/g, " ")} ${problem}`))
        .join(". ");
    }
    for (const key of ["message", "detail", "error_description", "error"]) {
      if (typeof body[key] === "string" && body[key].trim()) return sentence(tidy(body[key]));
    }
    return "";
  }

  async function errorMessage(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    let message = messageOf(body);
    if (response.status === 429) {
      message = message || RATE_LIMIT_MESSAGE;
      const wait = Number(response.headers.get("Retry-After") || response.headers.get("X-Retry-After"));
      if (Number.isFinite(wait) && wait > 0) {
        message += ` You can try again in ${Math.ceil(wait)} second${Math.ceil(wait) === 1 ? "" : "s"}.`;
      }
    }
    return message || `Something went wrong (HTTP ${response.status}). Please try again.`;
  }

  // A button in its loading state is disabled, says what is happening and shows a spinner (CSS).
  function setBusy(button, busy) {
    if (!button.dataset.idleLabel) button.dataset.idleLabel = button.textContent;
    button.disabled = busy;
    button.setAttribute("aria-busy", String(busy));
    button.textContent = busy ? button.dataset.busyLabel || button.dataset.idleLabel : button.dataset.idleLabel;
  }

  return Object.freeze({ NETWORK_MESSAGE, errorMessage, messageOf, setBusy });
})();
