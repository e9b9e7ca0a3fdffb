"""The sandbox's creator-centre pages: the comment page (a works picker, a comment list
that loads older pages when scrolled down, replies behind 查看N条回复) and the chat page
(contacts, and a message list that loads older messages when scrolled up, whose
messages live only in framework-style component props on its DOM nodes).

Their elements are the ones ``hiscrm_worker/platforms/douyin_api.py`` names for the
real pages: keep the two in step.
"""

from __future__ import annotations

import json

from .creator import CONTACTS_PATH, HISTORY_PATH, PATHS, WORKS_PATH, Generation

COMMENT_PAGE_SIZE = 20
WORK_PAGE_SIZE = 10
MESSAGE_PAGE_SIZE = 20

_COMMENTS = """<!doctype html>
<html><head><meta charset="utf-8"><title>评论管理</title>
<style>
.semi-modal[hidden] { display: none; }
.semi-modal-body { height: 240px; overflow: auto; border: 1px solid #ccc; }
[role="tabpanel"] { height: 400px; overflow: auto; border: 1px solid #ccc; }
.reply-list { margin-left: 2em; }
</style></head>
<body>
<div class="header"><span class="picker-btn">选择作品</span> <span id="current"></span></div>
<div class="semi-modal" hidden><div class="semi-modal-body"></div></div>
<div role="tabpanel"></div>
<script>
const API = __API__;
const modal = document.querySelector('.semi-modal');
const picker = document.querySelector('.semi-modal-body');
const list = document.querySelector('[role="tabpanel"]');
const web = API.generation === 'web';
let works = {loaded: false, cursor: 0, more: true, busy: false};
let shown = {work: null, cursor: 0, more: false, busy: false};

async function get(path, params) {
  const r = await fetch(path + '?' + new URLSearchParams(params), {credentials: 'same-origin'});
  return r.json();
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
async function loadWorks() {
  if (works.busy || !works.more) return;
  works.busy = true;
  const d = await get(API.works, {cursor: works.cursor, count: __WORKS__});
  works.busy = false;
  for (const w of d.item_info_list || []) {
    const item = el('div', 'container-Lkxos9');
    item.appendChild(el('div', 'title-LUOP3b', w.title));
    const right = el('div', 'right-os7ZB9');
    right.appendChild(el('div', '', String(w.comment_count)));
    item.appendChild(right);
    item.addEventListener('click', () => select(w.item_id, w.title));
    picker.appendChild(item);
  }
  works.more = !!d.has_more;
  works.cursor = d.cursor;
}
document.querySelector('.picker-btn').addEventListener('click', () => {
  modal.hidden = false;
  if (!works.loaded) { works.loaded = true; loadWorks(); }
});
picker.addEventListener('scroll', () => {
  if (picker.scrollTop + picker.clientHeight >= picker.scrollHeight - 4) loadWorks();
});
function comment(c, cls) {
  const id = web ? c.cid : c.comment_id;
  const name = web ? c.user.nickname : c.user_info.screen_name;
  const box = el('div', cls);
  box.appendChild(el('span', 'name', name));
  box.appendChild(el('span', 'text', c.text));
  return [box, id, Number(web ? c.reply_comment_total : c.reply_count)];
}
function repliesButton(box, id) {
  const button = el('div', 'load-more-8vdmB1');
  const replies = el('div', 'reply-list');
  const state = {cursor: 0, more: true, busy: false};
  button.addEventListener('click', async () => {
    if (state.busy || !state.more) return;
    state.busy = true;
    const params = {comment_id: id, cursor: state.cursor, count: 10};
    params[API.workParam] = shown.work;
    const d = await get(API.replies, params);
    state.busy = false;
    for (const r of (web ? d.comments : d.comment_info_list) || []) {
      replies.appendChild(comment(r, 'reply-item-Xk2s')[0]);
    }
    state.more = !!d.has_more;
    state.cursor = d.cursor;
    if (state.more) button.textContent = '展开更多回复'; else button.hidden = true;
  });
  return [button, replies];
}
async function loadComments() {
  if (shown.busy) return;
  shown.busy = true;
  const work = shown.work;
  const params = {cursor: shown.cursor, count: __COMMENTS__};
  params[API.workParam] = work;
  const d = await get(API.comments, params);
  shown.busy = false;
  if (work !== shown.work) return;
  for (const c of (web ? d.comments : d.comment_info_list) || []) {
    const [box, id, count] = comment(c, 'comment-item-Jb3Vx');
    if (count > 0) {
      const [button, replies] = repliesButton(box, id);
      button.textContent = '查看' + count + '条回复';
      box.appendChild(button);
      box.appendChild(replies);
    }
    list.appendChild(box);
  }
  shown.more = !!d.has_more;
  shown.cursor = d.cursor;
  if (!shown.more) list.appendChild(el('div', 'no-more', '没有更多评论'));
}
function select(id, title) {
  modal.hidden = true;
  document.getElementById('current').textContent = title;
  shown = {work: id, cursor: 0, more: false, busy: false};
  list.innerHTML = '';
  loadComments();
}
list.addEventListener('scroll', () => {
  if (shown.more && list.scrollTop + list.clientHeight >= list.scrollHeight - 4) loadComments();
});
</script>
</body></html>
"""

_CHAT = """<!doctype html>
<html><head><meta charset="utf-8"><title>私信</title>
<style>
.conversations { width: 240px; float: left; }
.box-content-jSgLQF { height: 300px; overflow: auto; margin-left: 260px; border: 1px solid #ccc; }
.msg-item { padding: 4px; }
</style></head>
<body>
<div class="conversations"></div>
<div class="box-content-jSgLQF"><div class="messages"></div></div>
<script>
const API = __API__;
const rows = document.querySelector('.conversations');
const box = document.querySelector('.box-content-jSgLQF');
const list = box.firstElementChild;
const KEY = Math.random().toString(36).slice(2, 10);  // like React's per-root suffix
let open = {fan: null, cursor: 0, more: false, busy: false};

function node(m) {
  // the text is all the DOM shows; the message lives in the component's props
  const e = document.createElement('div');
  e.className = 'msg-item';
  e.textContent = m.text;
  const props = {
    serverId: m.server_id, conversationId: m.conversation_id, sender: m.sender,
    secSender: m.sec_sender, content: JSON.stringify({text: m.text, aweType: 700}),
    createdAt: m.created_at, isFromMe: false, type: 7,
  };
  const item = {tag: 0, type: 'MessageItem', memoizedProps: props, child: null, sibling: null};
  e['__reactFiber$' + KEY] = {
    tag: 5, type: 'div', memoizedProps: {className: 'msg-item'}, child: item, sibling: null,
  };
  e['__reactProps$' + KEY] = {className: 'msg-item', children: m.text};
  return e;
}
async function older() {
  if (open.busy || !open.more) return;
  open.busy = true;
  const fan = open.fan;
  const q = new URLSearchParams({to_user_id: fan, cursor: open.cursor, count: __MESSAGES__});
  const r = await fetch(API.history + '?' + q, {credentials: 'same-origin'});
  const d = JSON.parse(atob(await r.text()));
  open.busy = false;
  if (fan !== open.fan) return;
  const before = box.scrollHeight;
  const first = list.firstChild;
  for (const m of d.messages) list.insertBefore(node(m), first);
  box.scrollTop += box.scrollHeight - before;  // keep the reader where they were
  open.cursor = d.cursor;
  open.more = d.has_more;
  if (!open.more) list.insertBefore(Object.assign(document.createElement('div'),
    {className: 'no-more', textContent: '没有更多消息了'}), list.firstChild);
}
async function show(fan) {
  open = {fan, cursor: 0, more: true, busy: false};
  list.innerHTML = '';
  await older();
  box.scrollTop = box.scrollHeight;
}
box.addEventListener('scroll', () => { if (box.scrollTop <= 4) older(); });
fetch(API.contacts, {credentials: 'same-origin'}).then((r) => r.json()).then((d) => {
  for (const u of d.user_list || []) {
    const row = document.createElement('div');
    row.setAttribute('role', 'list-item');
    row.textContent = u.user.nickname;
    row.addEventListener('click', () => show(u.user_id));
    rows.appendChild(row);
  }
});
</script>
</body></html>
"""


def comment_page(generation: Generation) -> str:
    api = {"generation": generation, "works": WORKS_PATH}
    api |= {
        "comments": PATHS[generation]["comments"],
        "replies": PATHS[generation]["replies"],
        "workParam": PATHS[generation]["work_param"],
    }
    return (
        _COMMENTS.replace("__API__", json.dumps(api))
        .replace("__WORKS__", str(WORK_PAGE_SIZE))
        .replace("__COMMENTS__", str(COMMENT_PAGE_SIZE))
    )


def chat_page() -> str:
    api = {"contacts": CONTACTS_PATH, "history": HISTORY_PATH}
    return _CHAT.replace("__API__", json.dumps(api)).replace("__MESSAGES__", str(MESSAGE_PAGE_SIZE))
