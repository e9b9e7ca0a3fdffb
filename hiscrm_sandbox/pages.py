"""The sandbox site's own pages. The login page's element ids are what the worker's
sandbox platform reads (keep them in step with ``hiscrm_worker/platforms/sandbox.py``);
the plain ``/comments`` and ``/dms`` lists are for people, the crawler walks the
creator-centre pages of :mod:`.creator_pages`."""

from __future__ import annotations

LOGIN = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sandbox login</title></head>
<body>
<h1>Sandbox — scan to log in</h1>
<img id="qr" alt="QR code" width="200" height="200">
<p id="status" data-state="loading">loading…</p>
<script>
let token = null;
async function newCode(previous) {
  const r = await fetch('/api/qr/new', {method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify(previous ? {previous} : {})});
  const s = document.getElementById('status');
  if (r.status === 410) { s.dataset.state = 'failed'; s.textContent = 'QR code expired'; return; }
  const d = await r.json();
  token = d.token;
  const img = document.getElementById('qr');
  img.dataset.refresh = d.refresh;
  img.src = '/api/qr/' + token + '.png';
  s.dataset.state = 'pending'; s.textContent = 'scan the code with the app';
}
async function poll() {
  if (token) {
    const r = await fetch('/api/qr/' + token + '/status');
    const d = await r.json();
    const s = document.getElementById('status');
    if (d.status === 'scanned') {
      s.dataset.state = 'scanned'; s.textContent = 'scanned: confirm on your phone';
    }
    else if (d.status === 'confirmed') {
      localStorage.setItem('HasUserLogin', '1');
      s.dataset.state = 'confirmed'; location.href = '/profile'; return;
    } else if (d.status === 'expired') { const t = token; token = null; await newCode(t); }
  }
  if (document.getElementById('status').dataset.state !== 'failed') setTimeout(poll, 200);
}
newCode(null).then(poll);
</script>
</body></html>
"""

PROFILE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sandbox profile</title></head>
<body><h1>Profile</h1><p>user id: <span id="uid"></span></p>
<script>
fetch('/api/profile/self').then(r => r.json()).then(d => {
  document.getElementById('uid').textContent = d.user.uid; });
</script></body></html>
"""

# Newest first, one page per response, like the creator centre's lists: the page asks
# for the next one with the cursor of the last response when "more" is clicked (the
# real site does it on scroll). ``?cursor=N`` opens the list at that cursor.
_LIST = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sandbox {kind}</title></head>
<body><h1>{kind}</h1><ul id="items"></ul>
<button id="more" hidden>more</button>
<script>
const more = document.getElementById('more');
let cursor = new URLSearchParams(location.search).get('cursor');
async function load() {{
  more.hidden = true;
  const q = cursor === null ? '' : '?cursor=' + encodeURIComponent(cursor);
  const r = await fetch('/api/{kind}' + q);
  const d = await r.json();
  const ul = document.getElementById('items');
  for (const it of (d['{kind}'] || [])) {{
    const li = document.createElement('li');
    li.dataset.id = it.id; li.textContent = it.author + ': ' + it.text; ul.appendChild(li);
  }}
  if (d.has_more) {{
    cursor = String(d.cursor); more.dataset.cursor = cursor; more.hidden = false;
  }}
  document.body.dataset.loaded = '1';
}}
more.addEventListener('click', load);
load();
</script></body></html>
"""

PAGES = {
    "/profile": PROFILE,
    "/comments": _LIST.format(kind="comments"),
    "/dms": _LIST.format(kind="dms"),
}
