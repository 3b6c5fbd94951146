// AUTH_MODE=jwt: ask for a bearer token, keep it in sessionStorage (this tab only) and send it.
// In none mode the form stays hidden and nothing is sent.
"use strict";
const auth = (() => {
  const KEY = "thumbnailer.token";
  const required = document.body.dataset.auth === "jwt";
  const form = document.getElementById("auth");
  const input = document.getElementById("token");
  const note = document.getElementById("auth-status");
  const listeners = [];

  const token = () => sessionStorage.getItem(KEY) || "";
  const headers = (extra = {}) => (token() ? { ...extra, Authorization: "Bearer " + token() } : { ...extra });
  const say = (text) => { if (note) note.textContent = text; };
  const changed = () => listeners.forEach((fn) => fn());

  if (required && form) {
    form.hidden = false;
    say(token() ? "token set for this tab" : "paste a token to continue");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const value = input.value.trim().replace(/^Bearer\s+/i, "");
      if (!value) return;
      sessionStorage.setItem(KEY, value);
      input.value = "";
      say("token set for this tab");
      changed();
    });
    document.getElementById("forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      say("token forgotten");
      changed();
    });
  }

  // A 401 means the token is missing, expired or not accepted: say so where the user looks.
  const refused = (status) => {
    if (status === 401 && required) say("token missing, expired or not accepted: paste a new one");
    return status === 401;
  };

  return { required, token, headers, refused, onChange: (fn) => listeners.push(fn) };
})();
