// workflow-artifacts web UI: the hash copy button, and a workflow page's live update (it
// listens to the workflow's change feed and, when something changed, fetches the page again
// and swaps its content in, without a reload). No inline script anywhere (CSP script-src 'self').
(function () {
  "use strict";

  function copied(button, label) {
    button.textContent = label;
    setTimeout(function () { button.textContent = "Copy"; }, 1500);
  }

  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "sr-only";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok;
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-copy]") : null;
    if (!button) return;
    var text = button.getAttribute("data-copy");
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { copied(button, "Copied"); },
        function () { copied(button, fallbackCopy(text) ? "Copied" : "Copy failed"); }
      );
    } else {
      copied(button, fallbackCopy(text) ? "Copied" : "Copy failed");
    }
  });

  var live = document.getElementById("live");
  if (!live || !live.getAttribute("data-live-url") || !window.EventSource) return;
  var status = document.getElementById("live-status");
  var feed = new EventSource(live.getAttribute("data-live-url"));
  var pending = null;

  function say(text) { if (status) status.textContent = text; }

  // The session ended (expired, key revoked, or open mode over): the feed said so, or
  // refused to reconnect (401), or the page itself now redirects to the sign-in form. The
  // live update stops for good and says so, with the way back in.
  var over = false;
  function signedOut() {
    if (over) return;
    over = true;
    feed.close();
    if (pending !== null) { clearTimeout(pending); pending = null; }
    if (!status) return;
    var link = document.createElement("a");
    link.href = "/ui/sign-in";
    link.textContent = "sign in again";
    status.replaceChildren(document.createTextNode("Signed out — "), link,
                           document.createTextNode(". Live updates have stopped."));
  }

  function isSignIn(response) {
    return response.status === 401 ||
      (response.redirected && new URL(response.url).pathname === "/ui/sign-in");
  }

  // The feed refused a reconnect (the browser gives up: CLOSED): find out why.
  function stopped() {
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (isSignIn(r)) signedOut();
        else say("Live updates stopped; reload the page.");
      })
      .catch(function () { say("Live updates stopped; reload the page."); });
  }

  function refresh() {
    pending = null;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (isSignIn(r)) { signedOut(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (!fresh) return;
        var nodes = Array.prototype.map.call(fresh.childNodes, function (n) {
          return document.importNode(n, true);
        });
        live.replaceChildren.apply(live, nodes);
        say("Updated at " + new Date().toLocaleTimeString() + ".");
      })
      .catch(function () { say("Could not update; reload the page."); });
  }

  function changed() { if (!over && pending === null) pending = setTimeout(refresh, 300); }

  ["artifact.created", "artifact.updated", "artifact.content_replaced", "artifact.deleted",
   "deliverable.changed"].forEach(function (type) { feed.addEventListener(type, changed); });
  feed.addEventListener("open", function () { say("Live: this page updates when the workflow changes."); });
  feed.addEventListener("signed-out", signedOut);
  feed.addEventListener("error", function () {
    if (over) return;
    if (feed.readyState === EventSource.CLOSED) stopped();
    else say("Live updates paused; retrying.");
  });
})();
