// The dashboard's entry: sign-in, then views chosen by the URL's fragment (#/runs, #/runs/<id>, #/new,
// #/compare/<id>,<id>). The fragment holds ids only; the API key never enters a URL.

import { getJson, session } from "./api.js";
import { compareView } from "./compare.js";
import { errorBox, fill, h } from "./dom.js";
import { newRunView } from "./new-run.js";
import { runView } from "./run.js";
import { runsView } from "./runs.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOutButton = document.getElementById("sign-out");

const ROUTES = [
  [/^#\/runs\/([A-Za-z0-9_-]+)$/, runView, "runs"],
  [/^#\/runs$/, runsView, "runs"],
  [/^#\/new$/, newRunView, "new"],
  [/^#\/compare(?:\/([A-Za-z0-9_,-]*))?$/, compareView, "compare"],
];

let leaveView = () => {};

function leave() {
  leaveView();
  leaveView = () => {};
}

function route() {
  leave();
  if (!session.key) {
    showSignIn();
    return;
  }
  nav.hidden = false;
  signOutButton.hidden = false;
  const hash = location.hash || "#/runs";
  for (const [pattern, view, section] of ROUTES) {
    const match = pattern.exec(hash);
    if (!match) continue;
    for (const link of nav.querySelectorAll("a")) link.classList.toggle("current", link.dataset.section === section);
    leaveView = view(main, match.slice(1)) ?? (() => {});
    return;
  }
  location.replace("#/runs");
}

function showSignIn(notice = null) {
  nav.hidden = true;
  signOutButton.hidden = true;
  // No `name`: were the form ever submitted by the browser itself, the key would not join the URL.
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", placeholder: "bpt_…", required: true });
  const problem = h("div", {}, notice ? errorBox(notice) : null);
  const button = h("button", { type: "submit", class: "primary", id: "sign-in-button" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin", id: "sign-in", method: "post", action: "#" },
    h("h1", {}, "Sign in"),
    h(
      "p",
      {},
      "Your API key (",
      h("code", {}, "bpt_…"),
      "; an administrator creates one with ",
      h("code", {}, "bertpt admin create-key"),
      "). It stays in this tab's session storage until you sign out or close the tab, and goes only to this API.",
    ),
    h("label", {}, "API key", input),
    problem,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    session.signIn(key);
    try {
      await getJson("/v1/runs?limit=1"); // a key the API accepts
      input.value = "";
      route();
    } catch (error) {
      session.signOut();
      fill(problem, errorBox(error));
    } finally {
      button.disabled = false;
    }
  });
  fill(main, form);
  input.focus();
}

session.onUnauthorized = (error) => {
  if (!session.key) return;
  session.signOut();
  leave();
  showSignIn(error);
};

signOutButton.addEventListener("click", () => {
  session.signOut();
  route();
});
window.addEventListener("hashchange", route);
route();
