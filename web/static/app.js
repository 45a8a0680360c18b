// Anvil web UI: a small single-page client of the REST API. No framework
// and no build step; the token lives in sessionStorage for this tab only.
'use strict';

const API = '/api/v1';
const POLL_MS = 2000;
const HISTORY = 60; // samples kept per chart (two minutes)

const state = {
  token: sessionStorage.getItem('anvil.token') || '',
  timer: null,
  // volume name -> {prev: {t, stats}, points: [{rd, wr, lat}]}
  series: new Map(),
  volumes: [],
  targets: [],
  subsystems: [],
};

// ---- helpers ----

function $(sel, root = document) { return root.querySelector(sel); }

// el builds an element: el('td', {class: 'x'}, 'text', child...).
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== false && v != null) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c == null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmtBytes(n) {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + ' ' + u[i];
}

let flashTimer = null;
function flash(msg, isError) {
  const f = $('#flash');
  f.textContent = msg;
  f.className = isError ? 'error' : '';
  f.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { f.hidden = true; }, isError ? 8000 : 3000);
}

class APIError extends Error {
  constructor(status, body) {
    super((body.field ? body.field + ': ' : '') + (body.error || ('HTTP ' + status)));
    this.status = status;
  }
}

// api calls the REST API with the token; a 401 sends the user to log in.
async function api(method, path, body) {
  const opts = { method, headers: { Authorization: 'Bearer ' + state.token } };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(API + path, opts);
  if (resp.status === 204 || resp.status === 202) return null;
  let data = null;
  try { data = await resp.json(); } catch (e) { data = {}; }
  if (!resp.ok) {
    if (resp.status === 401 && path !== '/volumes?probe') logout('Your token was refused; log in again.');
    throw new APIError(resp.status, data || {});
  }
  return data;
}

// act runs an action and reports its outcome.
async function act(fn, okMsg) {
  try {
    await fn();
    if (okMsg) flash(okMsg);
    await refresh();
  } catch (e) {
    flash(e.message, true);
  }
}

// ---- routing ----

function show(page) {
  for (const p of document.querySelectorAll('.page')) p.hidden = p.id !== 'page-' + page;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === page);
}

function route() {
  if (!state.token) { $('#nav').hidden = true; show('login'); stopPolling(); return; }
  $('#nav').hidden = false;
  const page = (location.hash.replace(/^#\//, '') || 'dashboard');
  show(['dashboard', 'volumes', 'targets', 'subsystems', 'sessions'].includes(page) ? page : 'dashboard');
  startPolling();
}

function logout(msg) {
  state.token = '';
  sessionStorage.removeItem('anvil.token');
  state.series.clear();
  route();
  if (msg) flash(msg, true);
}

function startPolling() {
  if (state.timer) return;
  refresh();
  state.timer = setInterval(refresh, POLL_MS);
}

function stopPolling() {
  clearInterval(state.timer);
  state.timer = null;
}

// ---- data ----

async function refresh() {
  if (!state.token) return;
  try {
    const [vols, tgts, sess, subs, ctrls] = await Promise.all([api('GET', '/volumes'), api('GET', '/targets'), api('GET', '/sessions'),
      api('GET', '/subsystems'), api('GET', '/controllers')]);
    state.volumes = vols;
    state.targets = tgts;
    state.subsystems = subs;
    sample(vols);
    renderSummary(vols, tgts, sess, subs, ctrls);
    renderCharts(vols);
    renderVolumes(vols);
    renderTargets(tgts, vols);
    renderSubsystems(subs, vols);
    renderSessions(sess);
    renderControllers(ctrls);
  } catch (e) {
    if (state.token) flash('refresh failed: ' + e.message, true);
  }
}

// latencySum estimates the time all reads and writes took: the engine times
// one operation in sample_every, so its sum is scaled up by that rate.
function scaledSum(l) { return l.sum_seconds * (l.sample_every || 1); }
function latencySum(s) { return scaledSum(s.read.latency) + scaledSum(s.write.latency); }
function opsSum(s) { return s.read.ops + s.write.ops; }

// sample turns cumulative counters into per-interval rates.
function sample(vols) {
  const now = performance.now();
  const seen = new Set();
  for (const v of vols) {
    seen.add(v.name);
    if (!v.stats) continue;
    let s = state.series.get(v.name);
    if (!s) { s = { prev: null, points: [] }; state.series.set(v.name, s); }
    if (s.prev) {
      const dt = (now - s.prev.t) / 1000;
      const p = s.prev.stats, c = v.stats;
      const dops = opsSum(c) - opsSum(p);
      s.points.push({
        rd: Math.max(0, c.read.bytes - p.read.bytes) / dt / 1048576,
        wr: Math.max(0, c.write.bytes - p.write.bytes) / dt / 1048576,
        iops: Math.max(0, dops) / dt,
        lat: dops > 0 ? (latencySum(c) - latencySum(p)) / dops * 1000 : 0,
      });
      if (s.points.length > HISTORY) s.points.shift();
    }
    s.prev = { t: now, stats: v.stats };
  }
  for (const name of [...state.series.keys()]) if (!seen.has(name)) state.series.delete(name);
}

// ---- rendering ----

function renderSummary(vols, tgts, sess, subs, ctrls) {
  const box = $('#summary');
  box.replaceChildren(
    el('div', { 'data-testid': 'sum-volumes' }, el('b', {}, vols.length), 'volumes'),
    el('div', { 'data-testid': 'sum-targets' }, el('b', {}, tgts.length), 'targets'),
    el('div', { 'data-testid': 'sum-sessions' }, el('b', {}, sess.length), 'sessions'),
    el('div', { 'data-testid': 'sum-subsystems' }, el('b', {}, subs.length), 'subsystems'),
    el('div', { 'data-testid': 'sum-controllers' }, el('b', {}, ctrls.filter(c => !c.discovery).length), 'NVMe controllers'),
    el('div', {}, el('b', {}, fmtBytes(vols.reduce((a, v) => a + v.size_bytes, 0))), 'provisioned'),
  );
}

function renderCharts(vols) {
  const box = $('#charts');
  const want = vols.map(v => v.name);
  for (const c of [...box.children]) if (!want.includes(c.dataset.volume)) c.remove();
  for (const v of vols) {
    let card = box.querySelector(`[data-volume="${CSS.escape(v.name)}"]`);
    if (!card) {
      card = el('div', { class: 'chart', 'data-volume': v.name, 'data-testid': 'chart-' + v.name },
        el('h2', {}, v.name),
        el('canvas', { width: 720, height: 280 }),
        el('div', { class: 'legend' }));
      box.append(card);
    }
    const s = state.series.get(v.name);
    const pts = s ? s.points : [];
    const last = pts[pts.length - 1] || { rd: 0, wr: 0, iops: 0, lat: 0 };
    const mapped = v.mapped_by.length ? 'mapped by ' + v.mapped_by.join(', ') : 'not mapped';
    card.querySelector('.legend').replaceChildren(
      el('span', { class: 'r' }, `read ${last.rd.toFixed(2)} MiB/s`), ' · ',
      el('span', { class: 'w' }, `write ${last.wr.toFixed(2)} MiB/s`), ' · ',
      el('span', { class: 'l' }, `latency ${last.lat.toFixed(2)} ms`), ' · ',
      `${last.iops.toFixed(0)} IOPS · ${fmtBytes(v.size_bytes)} · ${mapped}`);
    draw(card.querySelector('canvas'), pts);
  }
}

// draw plots throughput (left axis) and latency (right axis).
function draw(canvas, pts) {
  const ctx = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height, pad = 36;
  ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = '#e3e7ec';
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + (H - pad) * i / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(W - pad, y); ctx.stroke();
  }
  const maxT = Math.max(1, ...pts.map(p => Math.max(p.rd, p.wr)));
  const maxL = Math.max(1, ...pts.map(p => p.lat));
  ctx.fillStyle = '#65717e';
  ctx.font = '18px system-ui, sans-serif';
  ctx.fillText(maxT.toFixed(1) + ' MiB/s', pad + 4, pad / 2 + 16);
  ctx.textAlign = 'right';
  ctx.fillText(maxL.toFixed(1) + ' ms', W - pad - 4, pad / 2 + 16);
  ctx.textAlign = 'left';
  const line = (key, max, color) => {
    if (pts.length < 2) return;
    ctx.strokeStyle = color;
    ctx.lineWidth = 3;
    ctx.beginPath();
    pts.forEach((p, i) => {
      const x = pad + (W - 2 * pad) * (i + HISTORY - pts.length) / (HISTORY - 1);
      const y = pad / 2 + (H - pad) * (1 - p[key] / max);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  };
  const css = getComputedStyle(document.documentElement);
  line('rd', maxT, css.getPropertyValue('--read').trim() || '#2b6cb0');
  line('wr', maxT, css.getPropertyValue('--write').trim() || '#c05621');
  line('lat', maxL, css.getPropertyValue('--lat').trim() || '#2f855a');
}

function renderVolumes(vols) {
  const body = $('#volumes-body');
  // Keep a row being edited (focused resize box) intact.
  if (body.contains(document.activeElement) && document.activeElement.tagName === 'INPUT') return;
  body.replaceChildren(...vols.map(v => {
    const enc = encodeURIComponent(v.name);
    const size = el('input', { type: 'number', min: 1, class: 'narrow', value: Math.ceil(v.size_bytes / 1048576), 'aria-label': 'new size in MiB' });
    return el('tr', { 'data-testid': 'volume-' + v.name },
      el('td', {}, v.name),
      el('td', {}, fmtBytes(v.size_bytes)),
      el('td', {}, v.block_size),
      el('td', {}, el('button', { class: 'small', type: 'button', onclick: () => act(() => api('PATCH', '/volumes/' + enc, { write_cache: !v.write_cache }), `write cache ${v.write_cache ? 'off' : 'on'} for ${v.name}`) }, v.write_cache ? 'on' : 'off')),
      el('td', {}, el('button', { class: 'small', type: 'button', onclick: () => act(() => api('PATCH', '/volumes/' + enc, { read_only: !v.read_only }), `${v.name} is ${v.read_only ? 'writable' : 'read-only'}`) }, v.read_only ? 'yes' : 'no')),
      el('td', {}, v.mapped_by.join(', ') || '—'),
      el('td', {}, size, ' MiB ', el('button', { class: 'small', type: 'button', 'data-testid': 'resize-' + v.name, onclick: () => act(() => api('PATCH', '/volumes/' + enc, { size_bytes: Number(size.value) * 1048576 }), `resized ${v.name}`) }, 'Resize')),
      el('td', {}, el('button', {
        class: 'small danger', type: 'button', 'data-testid': 'delete-' + v.name,
        onclick: () => {
          const mapped = v.mapped_by.length > 0;
          if (!confirm(mapped ? `${v.name} is mapped by ${v.mapped_by.join(', ')}. Unmap it and delete it with all its data?` : `Delete ${v.name} and all its data?`)) return;
          act(() => api('DELETE', '/volumes/' + enc + (mapped ? '?force=true' : '')), `deleted ${v.name}`);
        },
      }, 'Delete')));
  }));
}

function renderTargets(tgts, vols) {
  const map = $('#lun-map');
  const keep = (sel, opts) => {
    const cur = sel.value;
    sel.replaceChildren(...opts.map(o => el('option', { value: o }, o)));
    if (opts.includes(cur)) sel.value = cur;
  };
  if (!map.contains(document.activeElement)) {
    keep(map.elements.iqn, tgts.map(t => t.iqn));
    keep(map.elements.volume, vols.map(v => v.name));
  }
  const body = $('#targets-body');
  if (body.contains(document.activeElement) && ['INPUT', 'TEXTAREA'].includes(document.activeElement.tagName)) return;
  body.replaceChildren(...tgts.map(t => {
    const enc = encodeURIComponent(t.iqn);
    const luns = t.luns.map(l => el('div', {}, `LUN ${l.lun} → ${l.volume} `,
      el('button', { class: 'small', type: 'button', 'data-testid': `unmap-${t.iqn}-${l.lun}`, onclick: () => act(() => api('DELETE', `/targets/${enc}/luns/${l.lun}`), `unmapped LUN ${l.lun}`) }, 'Unmap')));
    const open = el('input', { type: 'checkbox', checked: t.acl.open });
    const list = el('textarea', { placeholder: 'one initiator IQN per line', 'aria-label': 'allowed initiators' });
    list.value = (t.acl.initiators || []).join('\n');
    const acl = el('div', { class: 'acl' },
      el('label', {}, open, ' open'), list,
      el('button', {
        class: 'small', type: 'button',
        onclick: () => act(() => api('PUT', `/targets/${enc}/acl`, open.checked ? { open: true } : { initiators: list.value.split(/\s+/).filter(Boolean) }), 'access list saved'),
      }, 'Save access'));
    const chap = t.chap.enabled ? `user ${t.chap.user}${t.chap.mutual ? ', mutual ' + t.chap.mutual_user : ''}` : 'off';
    return el('tr', { 'data-testid': 'target-' + t.iqn },
      el('td', {}, t.iqn, t.alias ? el('div', { class: 'hint' }, t.alias) : null),
      el('td', {}, luns.length ? luns : '—'),
      el('td', {}, acl),
      el('td', {}, chap),
      el('td', {}, el('button', {
        class: 'small danger', type: 'button',
        onclick: () => { if (confirm(`Delete target ${t.iqn}? Its volumes are kept.`)) act(() => api('DELETE', '/targets/' + enc), 'deleted ' + t.iqn); },
      }, 'Delete')));
  }));
}

function renderSubsystems(subs, vols) {
  const add = $('#ns-add');
  const keep = (sel, opts) => {
    const cur = sel.value;
    sel.replaceChildren(...opts.map(o => el('option', { value: o }, o)));
    if (opts.includes(cur)) sel.value = cur;
  };
  if (!add.contains(document.activeElement)) {
    keep(add.elements.nqn, subs.map(s => s.nqn));
    keep(add.elements.volume, vols.map(v => v.name));
  }
  const body = $('#subsystems-body');
  if (body.contains(document.activeElement) && ['INPUT', 'TEXTAREA'].includes(document.activeElement.tagName)) return;
  body.replaceChildren(...subs.map(s => {
    const enc = encodeURIComponent(s.nqn);
    const nss = s.namespaces.map(n => el('div', { title: `NGUID ${n.nguid}\nUUID ${n.uuid}` }, `NSID ${n.nsid} → ${n.volume} `,
      el('button', { class: 'small', type: 'button', 'data-testid': `nsremove-${s.nqn}-${n.nsid}`, onclick: () => act(() => api('DELETE', `/subsystems/${enc}/namespaces/${n.nsid}`), `removed namespace ${n.nsid}`) }, 'Remove')));
    const any = el('input', { type: 'checkbox', checked: s.allow_any_host });
    const list = el('textarea', { placeholder: 'one host NQN per line', 'aria-label': 'allowed hosts' });
    list.value = (s.hosts || []).join('\n');
    const hosts = el('div', { class: 'acl' },
      el('label', {}, any, ' any host'), list,
      el('button', {
        class: 'small', type: 'button', 'data-testid': 'hosts-' + s.nqn,
        onclick: () => act(() => api('PUT', `/subsystems/${enc}/hosts`, any.checked ? { allow_any_host: true } : { hosts: list.value.split(/\s+/).filter(Boolean) }), 'hosts saved'),
      }, 'Save hosts'));
    return el('tr', { 'data-testid': 'subsystem-' + s.nqn },
      el('td', {}, s.nqn, el('div', { class: 'hint' }, 'serial ' + s.serial)),
      el('td', {}, nss.length ? nss : '—'),
      el('td', {}, hosts),
      el('td', {}, el('button', {
        class: 'small danger', type: 'button',
        onclick: () => { if (confirm(`Delete subsystem ${s.nqn}? Its hosts are disconnected; its volumes are kept.`)) act(() => api('DELETE', '/subsystems/' + enc), 'deleted ' + s.nqn); },
      }, 'Delete')));
  }));
}

function renderControllers(ctrls) {
  $('#controllers-body').replaceChildren(...ctrls.map(c => el('tr', { 'data-testid': 'controller-' + c.id },
    el('td', {}, c.id),
    el('td', {}, c.host_nqn),
    el('td', {}, c.discovery ? '(discovery)' : c.subsystem),
    el('td', {}, c.queues),
    el('td', {}, c.keep_alive_ms ? (c.keep_alive_ms / 1000) + ' s' : 'off'),
    el('td', {}, c.local_addr || '—'),
    el('td', {}, new Date(c.connected).toLocaleString()))));
}

function renderSessions(sess) {
  $('#sessions-body').replaceChildren(...sess.map(s => el('tr', {},
    el('td', {}, s.tsih),
    el('td', {}, s.initiator_name),
    el('td', {}, s.discovery ? '(discovery)' : s.target),
    el('td', {}, s.remote_addr),
    el('td', {}, s.commands_in_flight),
    el('td', {}, new Date(s.established).toLocaleString()),
    el('td', {}, el('button', {
      class: 'small danger', type: 'button',
      onclick: () => { if (confirm(`Log out session ${s.tsih} (${s.initiator_name})?`)) act(() => api('DELETE', '/sessions/' + s.tsih), 'logout requested'); },
    }, 'Log out')))));
}

// ---- forms ----

function wire() {
  $('#login-form').addEventListener('submit', async ev => {
    ev.preventDefault();
    const tok = $('#token').value.trim();
    const resp = await fetch(API + '/volumes', { headers: { Authorization: 'Bearer ' + tok } });
    if (!resp.ok) { flash(resp.status === 401 ? 'That token is not valid.' : 'Login failed: HTTP ' + resp.status, true); return; }
    state.token = tok;
    sessionStorage.setItem('anvil.token', tok);
    $('#token').value = '';
    if (!location.hash || location.hash === '#/login') location.hash = '#/dashboard';
    route();
  });
  $('#logout').addEventListener('click', () => logout());
  $('#volume-create').addEventListener('submit', ev => {
    ev.preventDefault();
    const f = ev.target.elements;
    const mult = { MiB: 1 << 20, GiB: 1 << 30, TiB: 2 ** 40 }[f.unit.value];
    const name = f.name.value.trim();
    act(async () => {
      await api('POST', '/volumes', { name, size_bytes: Number(f.size.value) * mult, block_size: Number(f.block_size.value) });
      ev.target.reset();
    }, 'created volume ' + name);
  });
  $('#target-create').addEventListener('submit', ev => {
    ev.preventDefault();
    const f = ev.target.elements;
    const iqn = f.iqn.value.trim();
    const body = { iqn };
    if (f.alias.value.trim()) body.alias = f.alias.value.trim();
    if (f.open.checked) body.acl = { open: true };
    act(async () => { await api('POST', '/targets', body); ev.target.reset(); }, 'created target ' + iqn);
  });
  $('#lun-map').addEventListener('submit', ev => {
    ev.preventDefault();
    const f = ev.target.elements;
    act(() => api('POST', `/targets/${encodeURIComponent(f.iqn.value)}/luns`, { lun: Number(f.lun.value), volume: f.volume.value }),
      `mapped ${f.volume.value} as LUN ${f.lun.value}`);
  });
  $('#subsystem-create').addEventListener('submit', ev => {
    ev.preventDefault();
    const f = ev.target.elements;
    const nqn = f.nqn.value.trim();
    const body = { nqn };
    if (f.any.checked) body.allow_any_host = true;
    act(async () => { await api('POST', '/subsystems', body); ev.target.reset(); }, 'created subsystem ' + nqn);
  });
  $('#ns-add').addEventListener('submit', ev => {
    ev.preventDefault();
    const f = ev.target.elements;
    const body = { volume: f.volume.value };
    if (Number(f.nsid.value) > 0) body.nsid = Number(f.nsid.value);
    act(() => api('POST', `/subsystems/${encodeURIComponent(f.nqn.value)}/namespaces`, body), `added ${f.volume.value} as a namespace`);
  });
  window.addEventListener('hashchange', route);
}

wire();
route();
