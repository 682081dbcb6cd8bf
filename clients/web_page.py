"""The feedback page that :mod:`clients.web` serves: one HTML document, inline style and script only."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="fedrlhf-token" content="{{TOKEN}}">
<link rel="icon" href="data:,">
<title>Your feedback · fedrlhf</title>
<style nonce="{{NONCE}}">
:root { --ink: #1d2433; --muted: #5b6474; --line: #dde2ea; --bg: #f5f7fb; --card: #fff;
        --accent: #2f6fed; --good: #1f9d55; --bad: #d64545; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 16px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 760px; margin: 0 auto; padding: 24px 16px 48px; }
header { display: flex; justify-content: space-between; align-items: baseline; gap: 12px; }
h1 { font-size: 1.4rem; margin: 0 0 4px; }
.sub { color: var(--muted); font-size: .9rem; margin: 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
        padding: 20px; margin-top: 16px; box-shadow: 0 1px 2px rgba(20, 30, 60, .05); }
.label { font-size: .75rem; letter-spacing: .06em; text-transform: uppercase; color: var(--muted);
         margin: 0 0 6px; }
.text { white-space: pre-wrap; margin: 0 0 16px; }
.response { background: var(--bg); border-radius: 8px; padding: 12px 14px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; margin-bottom: 16px; }
.pair .response { display: flex; flex-direction: column; justify-content: space-between; gap: 12px; }
textarea { width: 100%; min-height: 64px; padding: 10px; border: 1px solid var(--line);
           border-radius: 8px; font: inherit; resize: vertical; }
.actions { display: flex; gap: 10px; margin-top: 14px; flex-wrap: wrap; align-items: center; }
button { font: inherit; border: 1px solid var(--line); background: #fff; border-radius: 8px;
         padding: 8px 16px; cursor: pointer; display: inline-flex; align-items: center; gap: 8px; }
button:hover { border-color: var(--accent); }
button svg { width: 20px; height: 20px; fill: currentColor; }
#thumb-up { color: var(--good); } #thumb-down { color: var(--bad); }
#thumb-down svg { transform: rotate(180deg); }
.choose { color: var(--accent); font-weight: 600; }
#skip { margin-left: auto; color: var(--muted); border-color: transparent; }
.budget .bar { height: 10px; background: var(--bg); border-radius: 5px; overflow: hidden; margin: 8px 0; }
.budget .fill { height: 100%; background: var(--accent); width: 0; }
#budget-text { margin: 0; }
.hint { color: var(--muted); font-size: .85rem; margin: 6px 0 0; }
#status { min-height: 1.5em; color: var(--good); margin: 12px 0 0; }
#status.error { color: var(--bad); }
[hidden] { display: none !important; }
</style>
</head>
<body>
<svg hidden><symbol id="thumb" viewBox="0 0 24 24"><path d="M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31
  l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9
  c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z"/></symbol></svg>
<main>
<header>
  <div>
    <h1>Your feedback</h1>
    <p class="sub">Stays on this device, encrypted. Personal details are removed before anything trains.</p>
  </div>
  <span class="sub" id="waiting"></span>
</header>

<section class="card budget" id="budget" aria-label="privacy budget">
  <p class="label">Privacy budget</p>
  <p id="budget-text">…</p>
  <div class="bar"><div class="fill" id="budget-fill"></div></div>
  <p class="hint" id="budget-hint"></p>
</section>

<section class="card" id="item" hidden>
  <p class="label">Prompt</p>
  <p class="text" id="prompt"></p>
  <div id="single" hidden>
    <p class="label">Response</p>
    <p class="text response" id="response"></p>
  </div>
  <div id="pair" class="pair" hidden>
    <div class="response"><div><p class="label">A<span id="score-a"></span></p><p class="text"
      id="response-a"></p></div>
      <button class="choose" id="choose-a" type="button">A is better</button></div>
    <div class="response"><div><p class="label">B<span id="score-b"></span></p><p class="text"
      id="response-b"></p></div>
      <button class="choose" id="choose-b" type="button">B is better</button></div>
  </div>
  <p class="hint" id="ranked" hidden>Ranked by your reward model: A is its pick. Which do you prefer?</p>
  <p class="label">Why? (optional)</p>
  <textarea id="reason" maxlength="2000"
    placeholder="e.g. clear and polite, answered the question"></textarea>
  <div class="actions">
    <span id="thumbs">
      <button id="thumb-up" type="button" aria-label="thumbs up"><svg viewBox="0 0 24 24"><use
        href="#thumb"/></svg>Good</button>
      <button id="thumb-down" type="button" aria-label="thumbs down"><svg viewBox="0 0 24 24"><use
        href="#thumb"/></svg>Bad</button>
    </span>
    <button id="skip" type="button">Skip</button>
  </div>
</section>

<section class="card" id="empty" hidden>
  <p class="text">Nothing is waiting for your feedback.</p>
  <p class="hint">New responses appear here when your assistant asks what you think.</p>
</section>
<p id="status" role="status" aria-live="polite"></p>
</main>
<script nonce="{{NONCE}}">
"use strict";
const TOKEN = document.querySelector('meta[name="fedrlhf-token"]').content;
const $ = (id) => document.getElementById(id);
let current = null;

async function call(path, body) {
  const init = {headers: {"X-Fedrlhf-Token": TOKEN}};
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const reply = await fetch(path, init);
  const data = await reply.json();
  if (!reply.ok) throw new Error(data.error || reply.statusText);
  return data;
}

function fmt(x) { return String(Number(Number(x).toPrecision(3))); }

function showBudget(b) {
  if (b.error) { $("budget-text").textContent = b.error; return; }
  const spent = b.unbounded ? "unbounded" : fmt(b.spent);
  let text = "ε spent " + spent;
  if (b.lifetime !== null) text += " of " + fmt(b.lifetime) + " · remaining " + fmt(b.remaining);
  else text += " · no limit set";
  $("budget-text").textContent = text;
  const share = b.lifetime ? Math.min(1, (b.unbounded ? b.lifetime : b.spent) / b.lifetime) : 0;
  $("budget-fill").style.width = (100 * share).toFixed(1) + "%";
  $("budget-hint").textContent = "δ = " + b.delta + " · " + b.runs + " training run" +
    (b.runs === 1 ? "" : "s") + " so far. Lower ε means more privacy.";
}

function render(state) {
  showBudget(state.budget);
  current = state.item;
  $("waiting").textContent = state.waiting ? state.waiting + " waiting" : "";
  $("item").hidden = !current;
  $("empty").hidden = !!current;
  if (!current) return;
  const pair = current.responses.length === 2;
  $("prompt").textContent = current.prompt || "(no prompt)";
  $("single").hidden = pair;
  $("pair").hidden = !pair;
  $("thumbs").hidden = pair;
  const scored = pair && Array.isArray(current.scores) && current.scores.length === 2;
  $("ranked").hidden = !scored;
  if (pair) {
    $("response-a").textContent = current.responses[0];
    $("response-b").textContent = current.responses[1];
    $("score-a").textContent = scored ? " · score " + fmt(current.scores[0]) : "";
    $("score-b").textContent = scored ? " · score " + fmt(current.scores[1]) : "";
  } else {
    $("response").textContent = current.responses[0];
  }
  $("reason").value = "";
}

async function send(path, body, message) {
  const status = $("status");
  try {
    const data = await call(path, Object.assign({item: current.id}, body));
    status.className = "";
    status.textContent = message;
    render(data.state);
  } catch (err) {
    status.className = "error";
    status.textContent = "Not saved: " + err.message;
  }
}

const reason = () => $("reason").value;
$("thumb-up").onclick = () => send("/api/feedback", {label: 1, reason: reason()}, "Saved: thumbs up.");
$("thumb-down").onclick = () => send("/api/feedback", {label: -1, reason: reason()}, "Saved: thumbs down.");
$("choose-a").onclick = () => send("/api/feedback", {choice: "a", reason: reason()}, "Saved: you chose A.");
$("choose-b").onclick = () => send("/api/feedback", {choice: "b", reason: reason()}, "Saved: you chose B.");
$("skip").onclick = () => send("/api/skip", {}, "Skipped.");
call("/api/state").then(render).catch((err) => { $("status").textContent = err.message; });
</script>
</body>
</html>
"""
