// Quiver's web console: plain JavaScript, no dependencies, no build step.
// It reads the broker's JSON under /ui/api/ (read-only) once a second and
// draws with the DOM and SVG; nothing here writes to the broker.
'use strict';
(() => {
  const SVGNS = 'http://www.w3.org/2000/svg';
  const COLORS = ['#2f6fde', '#1f9d55', '#d98a00', '#d33a2c', '#7a4cc2', '#0f9aa8', '#b8558e', '#5b6478'];

  // ---- DOM helpers (text is always set as text: data never becomes markup)
  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function add(e, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k == null || k === false) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }
  const el = (tag, attrs, ...kids) => { const e = document.createElement(tag); setAttrs(e, attrs); return add(e, kids); };
  const sv = (tag, attrs, ...kids) => { const e = document.createElementNS(SVGNS, tag); setAttrs(e, attrs); return add(e, kids); };
  const $ = (sel, root = document) => root.querySelector(sel);

  // ---- formatting
  function fmtNum(v, digits = 0) {
    if (v == null || Number.isNaN(v)) return '–';
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(2) + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(2) + 'M';
    if (a >= 1e4) return (v / 1e3).toFixed(1) + 'k';
    return v.toFixed(a < 10 && digits ? digits : 0);
  }
  function fmtBytes(v) {
    if (v == null) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(v < 10 ? 2 : 1) : v.toFixed(0)) + ' ' + u[i];
  }
  function fmtMs(ms) {
    if (ms == null || ms < 0) return '–';
    if (ms < 1000) return ms.toFixed(0) + ' ms';
    const s = ms / 1000;
    if (s < 120) return s.toFixed(1) + ' s';
    if (s < 7200) return (s / 60).toFixed(1) + ' min';
    if (s < 172800) return (s / 3600).toFixed(1) + ' h';
    return (s / 86400).toFixed(1) + ' d';
  }
  function fmtUs(us) {
    if (us == null) return '–';
    if (us < 1000) return us.toFixed(0) + ' µs';
    if (us < 1e6) return (us / 1000).toFixed(us < 1e4 ? 2 : 1) + ' ms';
    return (us / 1e6).toFixed(2) + ' s';
  }
  const fmtClock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
  const fmtTime = (s) => (s ? new Date(s).toLocaleString([], { hour12: false }) : '–');
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);

  // ---- the API
  let token = sessionStorage.getItem('quiver-admin-token') || '';
  class AuthError extends Error {}
  async function api(path) {
    const r = await fetch('api/' + path, { headers: token ? { Authorization: 'Bearer ' + token } : {}, cache: 'no-store' });
    if (r.status === 401) {
      showLogin(token ? 'That token was refused.' : '');
      throw new AuthError('the admin token is needed');
    }
    let body;
    try { body = await r.json(); } catch (e) { throw new Error(r.status + ' ' + r.statusText); }
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }
  function showLogin(msg) {
    $('#login').hidden = false;
    $('#login-error').textContent = msg || '';
    $('#login-token').focus();
  }
  $('#login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = $('#login-token').value.trim();
    sessionStorage.setItem('quiver-admin-token', token);
    $('#login').hidden = true;
    state.authFailed = false;
    poll();
  });

  // ---- shared state, refreshed by poll()
  const KEEP = 600;
  const state = { status: null, t: [], cols: {}, totals: null, interval: 1000, lastT: 0, error: '', ticks: 0 };

  function mergeSeries(s) {
    state.interval = s.interval_ms || 1000;
    state.totals = s.totals;
    if (!s.t.length) return;
    state.t.push(...s.t);
    for (const [k, v] of Object.entries(s.cols)) (state.cols[k] = state.cols[k] || []).push(...v);
    const over = state.t.length - KEEP;
    if (over > 0) {
      state.t.splice(0, over);
      for (const v of Object.values(state.cols)) v.splice(0, over);
    }
    state.lastT = state.t[state.t.length - 1];
  }
  const latest = (col) => { const v = state.cols[col]; return v && v.length ? v[v.length - 1] : null; };

  let timer = 0;
  async function poll() {
    clearTimeout(timer);
    try {
      mergeSeries(await api('series?since=' + state.lastT));
      if (state.ticks % 2 === 0 || !state.status) state.status = await api('status');
      state.error = '';
    } catch (e) {
      if (e instanceof AuthError) return; // the login form restarts it
      state.error = e.message;
    }
    state.ticks++;
    const live = $('#live');
    live.className = 'live ' + (state.error ? 'err' : 'ok');
    live.title = state.error ? 'cannot reach the broker: ' + state.error : 'live: updated every second';
    if (state.status) {
      const b = state.status.broker;
      $('#broker').textContent = `${b.id || 'broker'} · ${roleOf(state.status)} · ${b.version}`;
    }
    try { if (current && current.update) current.update(); } catch (e) { showError(e); }
    timer = setTimeout(poll, state.interval);
  }
  function showError(e) {
    const p = $('#page-error');
    if (p) p.textContent = String(e && e.message ? e.message : e);
  }
  function roleOf(s) {
    return s.replication ? s.replication.role : 'standalone';
  }

  // ---- charts: SVG lines over the sampled points
  const CH = 170, ML = 60, MR = 10, MT = 8, MB = 22;
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  // chart returns {el, draw(t, series)}: series are [{name, color, values}],
  // values below 0 or null are gaps. opts: fmt (axis labels), log (log10 y).
  function chart(title, opts = {}) {
    const svg = sv('svg', { height: CH, role: 'img', 'aria-label': title, 'data-chart': opts.id || title });
    const legend = el('div', { class: 'legend' });
    const root = el('div', { class: 'card chart' }, el('h3', { text: title }), svg, legend);
    const fmt = opts.fmt || ((v) => fmtNum(v));
    function draw(t, series) {
      // Drawn at the width it is shown at, so that text keeps its size.
      const CW = Math.max(300, Math.round(svg.getBoundingClientRect().width) || 640);
      svg.setAttribute('viewBox', `0 0 ${CW} ${CH}`);
      svg.replaceChildren();
      legend.replaceChildren();
      const n = t.length;
      const pw = CW - ML - MR, ph = CH - MT - MB;
      let hi = 0, lo = Infinity;
      for (const s of series) for (const v of s.values) if (v != null && v >= 0) { hi = Math.max(hi, v); if (v > 0) lo = Math.min(lo, v); }
      const log = !!opts.log;
      let y0 = 0, y1 = niceMax(Math.max(hi, opts.min || 0));
      if (log) { y0 = Math.floor(Math.log10(Number.isFinite(lo) ? lo : 1)); y1 = Math.max(y0 + 1, Math.ceil(Math.log10(Math.max(hi, 1)))); }
      const yOf = (v) => {
        const f = log ? (Math.log10(Math.max(v, Math.pow(10, y0))) - y0) / (y1 - y0) : v / y1;
        return MT + ph - f * ph;
      };
      const t0 = n ? t[0] : 0, t1 = n ? t[n - 1] : 1;
      const xOf = (x) => ML + (t1 > t0 ? ((x - t0) / (t1 - t0)) * pw : pw);
      const ticks = log ? Array.from({ length: y1 - y0 + 1 }, (_, i) => Math.pow(10, y0 + i)) : [0, y1 / 2, y1];
      for (const v of ticks) {
        const y = yOf(v);
        svg.append(sv('line', { class: 'grid', x1: ML, x2: CW - MR, y1: y, y2: y }),
          sv('text', { x: ML - 6, y: y + 4, 'text-anchor': 'end', text: fmt(v) }));
      }
      svg.append(sv('line', { class: 'axis', x1: ML, x2: CW - MR, y1: MT + ph, y2: MT + ph }));
      if (n) {
        const marks = t1 - t0 >= 2000 ? [[0, t0], [1, (t0 + t1) / 2], [2, t1]] : [[2, t1]];
        for (const [i, x] of marks) {
          svg.append(sv('text', { x: xOf(x), y: CH - 6, 'text-anchor': ['start', 'middle', 'end'][i], text: fmtClock(x) }));
        }
      } else {
        svg.append(sv('text', { x: ML + pw / 2, y: MT + ph / 2, 'text-anchor': 'middle', text: 'waiting for the first samples…' }));
      }
      const last = {};
      series.forEach((s, i) => {
        const color = s.color || COLORS[i % COLORS.length];
        let pts = [];
        const flush = () => {
          if (pts.length === 1) {
            const [x, y] = pts[0].split(',');
            svg.append(sv('circle', { cx: x, cy: y, r: 2.5, fill: color, 'data-series': s.name }));
          } else if (pts.length) {
            svg.append(sv('polyline', { points: pts.join(' '), stroke: color, 'data-series': s.name }));
          }
          pts = [];
        };
        s.values.forEach((v, j) => {
          if (v == null || v < 0 || (log && v === 0)) { flush(); return; }
          pts.push(xOf(t[j]).toFixed(1) + ',' + yOf(v).toFixed(1));
        });
        flush();
        const lv = s.values.length ? s.values[s.values.length - 1] : null;
        last[s.name] = lv;
        legend.append(el('span', null, el('i', { style: null, 'data-color': color }), `${s.name} ${lv == null || lv < 0 ? '–' : fmt(lv)}`));
      });
      // The legend's colour swatches: set through the DOM (the page's CSP
      // allows no inline style attributes).
      legend.querySelectorAll('i').forEach((i) => { i.style.background = i.dataset.color; });
      svg.dataset.points = String(n);
      svg.dataset.last = JSON.stringify(last);
    }
    return { el: root, draw };
  }
  function seriesChart(title, cols, opts) {
    const c = chart(title, opts);
    return {
      el: c.el,
      update() {
        c.draw(state.t, cols.map(([col, name]) => ({ name, values: state.cols[col] || [] })));
      },
    };
  }

  function stat(label, value, sub, cls) {
    return el('div', { class: 'card stat' }, el('div', { class: 'label', text: label }),
      el('div', { class: 'value ' + (cls || ''), text: value }), sub ? el('div', { class: 'sub', text: sub }) : null);
  }
  function bar(frac) {
    const inner = el('div');
    inner.style.width = Math.max(0, Math.min(100, frac * 100)).toFixed(1) + '%';
    return el('div', { class: 'bar' }, inner);
  }
  function table(headers, rows) {
    return el('table', null,
      el('thead', null, el('tr', null, headers.map((h) => el('th', { class: h.startsWith('#') ? 'num' : null, text: h.replace(/^#/, '') })))),
      el('tbody', null, rows));
  }
  const td = (v, cls) => el('td', { class: cls }, v);
  const num = (v) => el('td', { class: 'num' }, v);

  // ---- pages
  const pages = {};
  let current = null;

  pages.overview = () => {
    const top = el('div');
    const cards = el('div', { class: 'cards' });
    const charts = [
      seriesChart('Sends and fetches per second', [['sends', 'sends/s'], ['fetched', 'records fetched/s']], { id: 'sends', min: 10 }),
      seriesChart('Bytes written per second', [['bytes', 'bytes/s']], { id: 'bytes', fmt: fmtBytes, min: 1024 }),
      seriesChart('Send latency (broker: arrival to acknowledgement)', [['p50', 'p50'], ['p90', 'p90'], ['p99', 'p99'], ['p999', 'p99.9'], ['max', 'max']],
        { id: 'latency', fmt: fmtUs, log: true }),
      seriesChart('Lags: not visible to consumers, not durable, replication', [['not_visible_ms', 'not visible'], ['not_durable_ms', 'not durable'], ['repl_lag_ms', 'replication']],
        { id: 'lags', fmt: (v) => fmtMs(v), min: 100 }),
      seriesChart('Refused sends per second', [['busy', 'BUSY'], ['disk_full', 'DISK_FULL'], ['errors', 'all errors']], { id: 'refused', fmt: (v) => fmtNum(v, 1), min: 10 }),
      seriesChart('Send queue depth', [['queue_depth', 'waiting sends']], { id: 'queue', min: 10 }),
    ];
    const root = el('div', null, el('h1', { text: 'Overview' }), top, cards, el('div', { class: 'charts' }, charts.map((c) => c.el)));
    return {
      el: root,
      update() {
        const s = state.status;
        const b = s.broker, p = s.positions, l = s.lag, d = s.disk;
        top.replaceChildren(
          el('p', { class: 'muted' }, `Broker ${b.id || '(no id)'} · ${roleOf(s)}${s.replication ? ' · epoch ' + s.replication.epoch : ''} · engine ${b.engine} · durability ${b.durability} · up ${fmtMs(b.uptime_sec * 1000)} · QUIC ${b.listen || ''}`),
          s.warnings.length
            ? el('div', { class: 'banner bad', 'data-warnings': s.warnings.length }, el('strong', { text: 'Warnings' }), el('ul', { class: 'warnings' }, s.warnings.map((w) => el('li', { text: w }))))
            : el('div', { class: 'banner ok', 'data-warnings': 0, text: 'No warnings: sends are durable and visible within their limits.' }));
        const used = d.total_bytes ? 1 - d.free_bytes / d.total_bytes : 0;
        const tot = state.totals || {};
        const conns = s.connections;
        cards.replaceChildren(
          stat('Sends / s', fmtNum(latest('sends') || 0), `${fmtNum(tot.sends || 0)} since start`),
          stat('Send latency p99', fmtUs(latest('p99')), `p50 ${fmtUs(latest('p50'))} · max ${fmtUs(latest('max'))}`),
          stat('Not durable', fmtBytes(l.written_not_durable_bytes), `oldest ${fmtMs(l.not_durable_ms)}`, l.not_durable_ms > 1000 ? 'warnc' : ''),
          stat('Not visible', fmtBytes(l.written_not_visible_bytes), `oldest ${fmtMs(l.not_visible_ms)}`, l.not_visible_ms > 1000 ? 'warnc' : ''),
          stat('Send queue', fmtNum(s.send_queue.depth), `waits at most ${fmtMs(s.send_queue.max_wait_ms)}`),
          stat('BUSY refusals', fmtNum(s.send_queue.busy_total), 'since start', s.send_queue.busy_total ? 'warnc' : ''),
          stat('DISK_FULL refusals', fmtNum(tot.disk_full || 0), d.full ? 'the disk is below its reserve now' : 'since start', d.full ? 'bad' : ''),
          el('div', { class: 'card stat' }, el('div', { class: 'label', text: 'Disk' }),
            el('div', { class: 'value ' + (d.full ? 'bad' : ''), text: fmtBytes(d.free_bytes) + ' free' }), bar(used),
            el('div', { class: 'sub', text: `of ${fmtBytes(d.total_bytes)} · reserve ${fmtBytes(d.reserve_bytes)} · log room ${fmtBytes(d.log_room_bytes)}` })),
          stat('Log', fmtBytes(p.written - p.start), `written ${fmtNum(p.written)} · durable ${fmtNum(p.durable)} · visible ${fmtNum(p.dispatched)}`),
          conns ? stat('Connections', fmtNum(conns.open), `${conns.sessions} sessions · ${fmtNum(conns.accepted_total)} accepted · ${sum((conns.failed_handshakes || []).map((f) => f.count))} failed handshakes`) : null);
        for (const c of charts) c.update();
      },
    };
  };

  pages.cluster = () => {
    const picture = el('div', { class: 'card picture' });
    const details = el('div');
    const root = el('div', null, el('h1', { text: 'Cluster' }), picture, details);
    return {
      el: root,
      update() {
        const s = state.status;
        const model = clusterModel(s);
        picture.replaceChildren(drawCluster(model));
        details.replaceChildren(...clusterTables(s, model));
      },
    };
  };

  // clusterModel turns the status document into groups of brokers, as
  // this broker knows them: the controller's groups, or its own group and
  // the brokers its routes name.
  function clusterModel(s) {
    const me = s.broker.id;
    const r = s.replication;
    const ctl = r && r.controller;
    const aside = new Map((s.clients_set_aside || []).map((a) => [a.addr, a]));
    const groups = [];
    const lagOf = new Map();
    if (r && r.followers) for (const f of r.followers) lagOf.set(f.id, f);
    if (ctl && ctl.groups && ctl.groups.length) {
      for (const g of ctl.groups) {
        groups.push({
          name: g.name, epoch: g.epoch, waiting: g.waiting,
          brokers: g.members.map((m) => ({
            id: m.id, addr: m.addr, leader: m.id === g.leader, live: m.live, inSync: m.in_sync || m.id === g.leader,
            eligible: (g.eligible || []).includes(m.id), left: m.left, me: m.id === me, follower: lagOf.get(m.id), aside: aside.get(m.addr),
          })),
        });
      }
    } else {
      const byGroup = new Map();
      const self = { id: me || 'this broker', addr: s.broker.listen, leader: !r || r.role === 'leader', live: true, inSync: true, me: true, aside: aside.get(s.broker.listen) };
      const myGroup = (s.cluster || []).find((c) => c.id === me && c.group) || null;
      const gname = myGroup ? myGroup.group : (r ? 'this group' : 'standalone');
      byGroup.set(gname, { name: gname, epoch: r ? r.epoch : 0, brokers: [self] });
      if (r && r.followers) {
        for (const f of r.followers) byGroup.get(gname).brokers.push({ id: f.id || f.addr, addr: f.addr, leader: false, live: f.connected, inSync: f.in_sync, follower: f, aside: aside.get(f.addr) });
      }
      if (r && r.role === 'follower' && r.following) {
        byGroup.get(gname).brokers.push({ id: r.leader || r.following.leader_addr, addr: r.following.leader_addr, leader: true, live: r.following.connected, inSync: true, aside: aside.get(r.following.leader_addr) });
        self.leader = false;
        self.followLag = r.following.lag_bytes;
      }
      for (const c of s.cluster || []) {
        const g = c.group || '(unknown group)';
        if (!byGroup.has(g)) byGroup.set(g, { name: g, epoch: c.epoch, brokers: [] });
        const grp = byGroup.get(g);
        if (grp.brokers.some((x) => (x.id && x.id === c.id) || x.addr === c.addr)) continue;
        grp.brokers.push({ id: c.id || c.addr, addr: c.addr, leader: c.role === 'leader', live: !c.err, inSync: c.role === 'leader' || c.role === 'follower', err: c.err, aside: aside.get(c.addr) });
      }
      groups.push(...byGroup.values());
    }
    return { groups, controller: ctl, me, aside: s.clients_set_aside || [] };
  }

  function drawCluster(m) {
    const SLOT = 180, GAP = 16, GH = 250;
    const widths = m.groups.map((g) => Math.max(300, Math.max(g.brokers.length - 1, 1) * SLOT + 20));
    const perRow = Math.max(1, Math.min(m.groups.length, 3));
    const rows = Math.ceil(m.groups.length / perRow);
    const rowW = [];
    m.groups.forEach((g, i) => { const r = Math.floor(i / perRow); rowW[r] = (rowW[r] || GAP) + widths[i] + GAP; });
    const top = m.controller ? 110 : 10;
    const W = Math.max(...rowW, 620), H = top + rows * (GH + GAP) + 4;
    const svg = sv('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, 'data-groups': m.groups.length });
    // Voters are addresses; name them by the broker that has the address.
    const idOf = new Map();
    for (const g of m.groups) for (const b of g.brokers) if (b.addr) idOf.set(b.addr, b.id);
    if (m.controller) {
      const c = m.controller;
      svg.append(sv('rect', { class: 'box', x: GAP, y: 10, width: W - 2 * GAP, height: 90, rx: 6 }),
        sv('text', { x: GAP + 10, y: 28, text: `Controller quorum · term ${c.term} · ${c.leader ? 'leader ' + (idOf.get(c.leader) || c.leader) : 'NO LEADER'} · this broker ${c.connected ? 'has a session' : 'has NO session'} (lease ${fmtMs(c.lease_ms)})` }));
      const n = c.voters.length;
      c.voters.forEach((v, i) => {
        const x = GAP + ((i + 0.5) * (W - 2 * GAP)) / n;
        const lead = v === c.leader;
        svg.append(sv('g', { class: 'node', 'data-voter': v },
          sv('circle', { cx: x, cy: 54, r: 10, fill: lead ? '#dcf3e5' : '#eef1f5', stroke: lead ? '#1f9d55' : '#9aa3b2' }),
          sv('text', { x, y: 58, 'text-anchor': 'middle', text: lead ? '★' : '' }),
          sv('text', { x, y: 80, 'text-anchor': 'middle', text: (idOf.get(v) || '') + (lead ? ' (leader)' : '') }),
          sv('text', { class: 'small', x, y: 92, 'text-anchor': 'middle', text: v })));
      });
    }
    let gx = GAP, row = 0;
    m.groups.forEach((g, gi) => {
      if (Math.floor(gi / perRow) !== row) { row = Math.floor(gi / perRow); gx = GAP; }
      const GW = widths[gi], gy = top + row * (GH + GAP);
      const grp = sv('g', { 'data-group': g.name });
      grp.append(sv('rect', { class: 'box', x: gx, y: gy, width: GW, height: GH, rx: 6 }),
        sv('text', { x: gx + 10, y: gy + 18, text: `group ${g.name}${g.epoch ? ' · epoch ' + g.epoch : ''}` }));
      if (g.waiting) grp.append(sv('text', { x: gx + 10, y: gy + 34, class: 'small', fill: '#d33a2c', text: g.waiting.slice(0, 60) }));
      const leader = g.brokers.find((b) => b.leader);
      const followers = g.brokers.filter((b) => b !== leader);
      const lx = gx + GW / 2, ly = gy + 62;
      const fy = gy + 170;
      const fx = (i) => gx + ((i + 0.5) * GW) / Math.max(followers.length, 1);
      followers.forEach((f, i) => {
        if (!leader) return;
        const cls = !f.live ? 'edge down' : !f.inSync ? 'edge lagging' : 'edge';
        grp.append(sv('line', { class: cls, x1: lx, y1: ly + 50, x2: fx(i), y2: fy - 16 }));
        if (f.follower) {
          grp.append(sv('text', { class: 'small', x: fx(i), y: fy - 24, 'text-anchor': 'middle', 'data-lag': f.id,
            text: `behind ${fmtBytes(f.follower.lag_bytes)} · ${fmtMs(f.follower.lag_ms)}` }));
        }
      });
      const node = (b, x, y) => {
        const fill = b.leader ? '#dcf3e5' : b.inSync ? '#e3ecfb' : b.eligible ? '#fff3dc' : '#f1f2f4';
        const stroke = !b.live ? '#d33a2c' : b.leader ? '#1f9d55' : b.inSync ? '#2f6fde' : '#d98a00';
        const gN = sv('g', { class: 'node', 'data-broker': b.id, 'data-role': b.leader ? 'leader' : 'follower' },
          sv('circle', { cx: x, cy: y, r: 14, fill, stroke }));
        if (b.aside) gN.append(sv('circle', { cx: x, cy: y, r: 19, fill: 'none', stroke: '#d33a2c', 'stroke-dasharray': '3 2' }));
        gN.append(sv('text', { x, y: y + 4, 'text-anchor': 'middle', text: b.leader ? 'L' : b.inSync ? 'F' : '–' }),
          sv('text', { x, y: y + 30, 'text-anchor': 'middle', text: (b.id || '?') + (b.me ? ' (this broker)' : '') }),
          sv('text', { class: 'small', x, y: y + 42, 'text-anchor': 'middle', text: b.addr || '' }));
        const notes = [];
        if (!b.live) notes.push(b.err ? 'unreachable' : 'not live');
        else if (!b.leader && !b.inSync) notes.push(b.eligible ? 'out of sync (eligible)' : 'out of sync');
        if (b.aside) notes.push(`set aside by ${b.aside.clients} client${b.aside.clients === 1 ? '' : 's'}`);
        if (notes.length) gN.append(sv('text', { class: 'small', x, y: y + 54, 'text-anchor': 'middle', fill: '#d33a2c', text: notes.join(' · ') }));
        return gN;
      };
      if (leader) grp.append(node(leader, lx, ly));
      else grp.append(sv('text', { x: lx, y: ly, 'text-anchor': 'middle', fill: '#d33a2c', text: 'no leader' }));
      followers.forEach((f, i) => grp.append(node(f, fx(i), fy)));
      svg.append(grp);
      gx += GW + GAP;
    });
    return svg;
  }

  function clusterTables(s, m) {
    const out = [];
    const r = s.replication;
    out.push(el('h2', { text: 'Groups' }), table(['Group', 'Leader', '#Epoch', 'In-sync set', 'Brokers', 'Note'],
      m.groups.map((g) => {
        const leader = g.brokers.find((b) => b.leader);
        return el('tr', null, td(g.name), td(leader ? leader.id : el('span', { class: 'bad', text: 'none' })), num(g.epoch || '–'),
          td(g.brokers.filter((b) => b.inSync).map((b) => el('span', { class: 'pill ' + (b.leader ? 'leader' : 'follower'), text: b.id }))),
          td(g.brokers.map((b) => el('span', { class: 'pill' + (b.live ? '' : ' bad'), text: b.id }))), td(g.waiting || ''));
      })));
    if (r && r.followers && r.followers.length) {
      out.push(el('h2', { text: 'This leader\'s followers' }), table(['Follower', 'Address', 'Connected', 'In sync', '#Lag', '#Behind for', '#Last ack', '#Reconnects'],
        r.followers.map((f) => el('tr', null, td(f.id), td(f.addr), td(f.connected ? 'yes' : el('span', { class: 'bad', text: 'no' })),
          td(f.in_sync ? 'yes' : el('span', { class: 'warnc', text: f.leaving ? 'leaving: ' + f.leaving : 'no' })),
          num(fmtBytes(f.lag_bytes)), num(fmtMs(f.lag_ms)), num(fmtMs(f.last_ack_ms)), num(f.reconnects)))));
    }
    if (r && r.following) {
      const f = r.following;
      out.push(el('h2', { text: 'Following' }), table(['Leader', 'Connected', '#Lag', '#Last heard', '#Reconnects', '#Truncations'],
        [el('tr', null, td(f.leader_addr), td(f.connected ? 'yes' : el('span', { class: 'bad', text: 'no' })), num(fmtBytes(f.lag_bytes)), num(fmtMs(f.last_heard_ms)), num(f.reconnects), num(f.truncations))]));
    }
    if (m.aside.length) {
      out.push(el('h2', { text: 'Brokers clients set aside' }), table(['Broker', '#Clients', 'Reason', 'Reported'],
        m.aside.map((a) => el('tr', null, td(a.addr), num(a.clients), td(a.reason || ''), td(fmtTime(a.last))))));
    } else {
      out.push(el('p', { class: 'muted', text: 'No client reports a broker set aside (slow or failing) right now.' }));
    }
    if (r && r.controller && r.controller.groups) {
      const el_ = [];
      for (const g of r.controller.groups) for (const e of g.elections || []) el_.push([g.name, e]);
      if (el_.length) {
        out.push(el('h2', { text: 'Elections' }), table(['Group', '#Epoch', 'From', 'To', 'Reason', '#Leaderless', 'At'],
          el_.reverse().map(([g, e]) => el('tr', null, td(g), num(e.epoch), td(e.from || '–'), td(e.to), td(e.reason + (e.unclean ? ' (UNCLEAN)' : '')), num(fmtMs(e.leaderless_ms)), td(fmtTime(e.at))))));
      }
    }
    return out;
  }

  pages.topics = () => {
    const body = el('div');
    const open = new Set();
    const root = el('div', null, el('h1', { text: 'Topics' }), body);
    return {
      el: root,
      update() {
        const topics = state.status.topics;
        if (!topics.length) {
          body.replaceChildren(el('p', { class: 'muted', text: 'No topics yet.' }));
          return;
        }
        const rows = [];
        for (const t of topics) {
          const msgs = sum(t.queues.map((q) => q.max - q.min));
          const ages = t.queues.filter((q) => q.last_store).map((q) => q.last_store_age_ms);
          const newest = ages.length ? Math.min(...ages) : null;
          rows.push(el('tr', { class: 'click', 'data-topic': t.name, onclick: () => { open.has(t.name) ? open.delete(t.name) : open.add(t.name); this_.update(); } },
            td((open.has(t.name) ? '▾ ' : '▸ ') + t.name), num(t.queues.length), num(fmtNum(msgs)), num(fmtNum(sum(t.queues.map((q) => q.max)))),
            num(newest == null ? '–' : fmtMs(newest) + ' ago'), td(el('a', { href: '#messages?topic=' + encodeURIComponent(t.name) + '&queue=0&offset=0', text: 'browse' }))));
          if (open.has(t.name)) {
            for (const q of t.queues) {
              rows.push(el('tr', { class: 'sub' }, td('   queue ' + q.queue), num(''), num(fmtNum(q.max - q.min)), num(`${q.min} – ${q.max}`),
                num(q.last_store ? fmtMs(q.last_store_age_ms) + ' ago' : '–'),
                td(el('a', { href: `#messages?topic=${encodeURIComponent(t.name)}&queue=${q.queue}&offset=${Math.max(q.min, q.max - 20)}`, text: 'newest' }))));
            }
          }
        }
        const shown = table(['Topic', '#Queues', '#Messages kept', '#Offsets (min – max)', '#Newest message', ''], rows);
        const total = state.status.topics_total || topics.length;
        body.replaceChildren(total > topics.length
          ? el('p', { class: 'muted', text: `The first ${fmtNum(topics.length)} of ${fmtNum(total)} topics (${fmtNum(state.status.queues_total)} queues) by name; quiver topic status T shows any.` })
          : '', shown);
      },
    };
  };
  let this_ = null; // the current page object (its handlers re-render it)

  pages.groups = (params) => {
    const sel = params.group || '';
    const body = el('div');
    const totals = chart('Lag of each group (messages)', { id: 'group-lag', min: 10 });
    const perQueue = chart(`Lag of ${sel} per queue (messages)`, { id: 'queue-lag', min: 10 });
    let lagAt = 0, lag = null;
    const root = el('div', null, el('h1', null, sel ? [el('a', { href: '#groups', text: 'Consumer groups' }), ' / ', sel] : 'Consumer groups'),
      sel ? perQueue.el : totals.el, body);
    return {
      el: root,
      update() {
        const groups = state.status.groups;
        if (Date.now() - lagAt > 5000) {
          lagAt = Date.now();
          api('lag' + (sel ? '?group=' + encodeURIComponent(sel) : '')).then((h) => {
            lag = h;
            const c = sel ? perQueue : totals;
            c.draw(h.t, h.series.map((s) => ({ name: sel ? `${s.topic}/${s.queue}` : s.group, values: s.lag })));
          }).catch(showError);
        }
        if (!sel) {
          body.replaceChildren(el('h2', { text: 'Groups' }), groups.length ? table(['Group', '#Members', '#Generation', '#Queues', '#Lag'],
            groups.map((g) => el('tr', { class: 'click', 'data-group': g.name, onclick: () => { location.hash = '#groups?group=' + encodeURIComponent(g.name); } },
              td(g.name), num(g.members.length), num(g.generation), num(g.offsets.length), num(fmtNum(sum(g.offsets.map((o) => o.lag)))))))
            : el('p', { class: 'muted', text: 'No consumer group has committed an offset or joined yet.' }));
          return;
        }
        const g = groups.find((x) => x.name === sel);
        if (!g) {
          body.replaceChildren(el('p', { class: 'muted', text: `No group ${sel} on this broker.` }));
          return;
        }
        body.replaceChildren(
          lag && lag.overflow ? el('p', { class: 'warnc', text: 'Too many queues to keep the history of all of them: some have none.' }) : '',
          el('h2', { text: 'Offsets' }),
          table(['Topic', '#Queue', '#Committed', '#End', '#Lag', ''], g.offsets.map((o) => el('tr', { 'data-queue': `${o.topic}/${o.queue}` }, td(o.topic), num(o.queue), num(o.committed), num(o.max),
            num(el('span', { class: o.lag ? 'warnc' : '', text: fmtNum(o.lag) })),
            td(el('a', { href: `#messages?topic=${encodeURIComponent(o.topic)}&queue=${o.queue}&offset=${o.committed}`, text: 'next messages' }))))),
          el('h2', { text: `Members (generation ${g.generation})` }),
          g.members.length ? table(['Member', 'Topics', 'Queues', '#Last seen'], g.members.map((m) => el('tr', null, td(m.id), td(m.topics.join(', ')),
            td(m.queues.map((q) => el('span', { class: 'pill', text: `${q.topic}/${q.queue}` }))), num(fmtMs(m.last_seen_ms) + ' ago'))))
            : el('p', { class: 'muted', text: 'No live member: the group resumes from these offsets.' }));
      },
    };
  };

  pages.messages = (params) => {
    const topics = (state.status ? state.status.topics : []).map((t) => t.name);
    const mode = params.key != null ? 'key' : params.time != null ? 'time' : 'offset';
    const f = {
      topic: el('input', { name: 'topic', list: 'topic-list', value: params.topic || '', required: true, size: 22 }),
      mode: el('select', { name: 'mode' }, ['offset', 'key', 'time'].map((m) => el('option', { value: m, selected: m === mode, text: 'by ' + m }))),
      queue: el('input', { name: 'queue', type: 'number', min: 0, value: params.queue || '0', size: 4 }),
      offset: el('input', { name: 'offset', type: 'number', min: 0, value: params.offset || '0' }),
      key: el('input', { name: 'key', value: params.key || '', size: 20 }),
      time: el('input', { name: 'time', value: params.time || '', placeholder: '2026-12-02T10:00:00Z or -15m', size: 24 }),
      limit: el('input', { name: 'limit', type: 'number', min: 1, max: 200, value: params.limit || '20', size: 4 }),
    };
    const labelled = (name, input) => el('label', { 'data-field': name }, name, input);
    const fields = { queue: labelled('queue', f.queue), offset: labelled('offset', f.offset), key: labelled('key', f.key), time: labelled('time', f.time) };
    const showFields = () => {
      const m = f.mode.value;
      fields.queue.hidden = m === 'key';
      fields.offset.hidden = m !== 'offset';
      fields.key.hidden = m !== 'key';
      fields.time.hidden = m !== 'time';
    };
    f.mode.addEventListener('change', showFields);
    showFields();
    const results = el('div', { id: 'results' });
    const form = el('form', {
      class: 'search', onsubmit: (ev) => {
        ev.preventDefault();
        const q = new URLSearchParams({ topic: f.topic.value.trim() });
        const m = f.mode.value;
        if (m === 'offset') { q.set('queue', f.queue.value); q.set('offset', f.offset.value || '0'); }
        if (m === 'key') q.set('key', f.key.value);
        if (m === 'time') { q.set('time', f.time.value.trim()); if (f.queue.value !== '') q.set('queue', f.queue.value); }
        if (f.limit.value && f.limit.value !== '20') q.set('limit', f.limit.value);
        location.hash = '#messages?' + q.toString();
      },
    }, labelled('topic', f.topic), labelled('search', f.mode), fields.queue, fields.offset, fields.key, fields.time, labelled('limit', f.limit), el('button', { type: 'submit', text: 'Show' }));
    const root = el('div', null, el('h1', { text: 'Messages' }), el('datalist', { id: 'topic-list' }, topics.map((t) => el('option', { value: t }))), form, results);
    if (params.topic) search(params, results);
    else results.append(el('p', { class: 'muted', text: 'Pick a topic; read a queue from an offset, find a key, or read from a time. Read-only.' }));
    return { el: root };
  };

  function relTime(s) {
    const m = /^-(\d+(?:\.\d+)?)(s|m|h|d)$/.exec(s);
    if (!m) return s;
    const mult = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[m[2]];
    return String(Date.now() - parseFloat(m[1]) * mult);
  }

  async function search(params, results) {
    const q = new URLSearchParams(params);
    if (q.has('time')) q.set('time', relTime(q.get('time')));
    results.replaceChildren(el('p', { class: 'muted', text: 'Reading…' }));
    let r;
    try {
      r = await api('messages?' + q.toString());
    } catch (e) {
      if (!(e instanceof AuthError)) results.replaceChildren(el('p', { class: 'bad', 'data-error': '', text: e.message }));
      return;
    }
    const head = [];
    if (r.min != null) head.push(`queue ${r.queue}: offsets ${r.min} – ${r.max}`);
    if (r.note) head.push(r.note);
    const rows = [];
    for (const m of r.messages) {
      const detail = el('tr', { class: 'sub', hidden: true }, el('td', { colspan: 7 }, messageDetail(m)));
      rows.push(el('tr', { class: 'click', 'data-offset': m.offset, 'data-queue': m.queue, onclick: () => { detail.hidden = !detail.hidden; } },
        num(m.queue), num(m.offset), td(fmtTime(m.store_time)), td(m.key ? el('code', { text: shown(m.key) }) : el('span', { class: 'muted', text: '–' })),
        td(m.tags || ''), num(fmtBytes(m.size)), td(el('code', { class: 'preview', text: preview(m.body) }))), detail);
    }
    const out = [el('p', { class: 'muted', text: head.join(' · ') })];
    out.push(r.messages.length ? table(['#Queue', '#Offset', 'Stored', 'Key', 'Tags', '#Size', 'Body'], rows) : el('p', { class: 'muted', text: 'No messages.' }));
    if (r.next != null && r.max != null && r.next < r.max && r.messages.length) {
      const more = new URLSearchParams(params);
      more.set('offset', r.next);
      out.push(el('p', null, el('a', { href: '#messages?' + more.toString(), text: `next page (from offset ${r.next}) →` })));
    }
    results.replaceChildren(...out);
  }

  const shown = (b) => (b.text != null ? b.text : '0x' + toHex(b64bytes(b.base64)));
  function preview(b) {
    const s = b.text != null ? b.text.replace(/\s+/g, ' ') : '(binary) ' + toHex(b64bytes(b.base64).slice(0, 24));
    return s.length > 80 ? s.slice(0, 80) + '…' : s;
  }
  function b64bytes(s) {
    const bin = atob(s || '');
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  const bytesOf = (b) => (b.text != null ? new TextEncoder().encode(b.text) : b64bytes(b.base64));
  const toHex = (u8) => Array.from(u8, (x) => x.toString(16).padStart(2, '0')).join('');
  function hexdump(u8) {
    const lines = [];
    for (let i = 0; i < u8.length; i += 16) {
      const row = u8.slice(i, i + 16);
      const hex = Array.from(row, (x) => x.toString(16).padStart(2, '0')).join(' ');
      const asc = Array.from(row, (x) => (x >= 32 && x < 127 ? String.fromCharCode(x) : '.')).join('');
      lines.push(i.toString(16).padStart(8, '0') + '  ' + hex.padEnd(48) + ' ' + asc);
    }
    return lines.join('\n');
  }
  function messageDetail(m) {
    const body = el('pre', { class: 'body' });
    let hex = m.body.text == null;
    const render = () => { body.textContent = hex ? hexdump(bytesOf(m.body)) : m.body.text; };
    render();
    const toggle = m.body.text != null ? el('button', { class: 'plain', type: 'button', text: 'text / hex', onclick: (ev) => { ev.stopPropagation(); hex = !hex; render(); } }) : null;
    const meta = [`stored ${m.store_time}`, m.client_time ? `sent ${m.client_time}` : '', m.batch ? 'in a batch record' : '', m.compressed ? `compressed (${m.compressed})` : '', m.body.truncated ? 'body cut at 64 KiB' : ''].filter(Boolean).join(' · ');
    return el('div', null, el('p', { class: 'muted', text: meta }),
      m.headers.length ? table(['Header', 'Value'], m.headers.map((h) => el('tr', null, td(el('code', { text: h.key })), td(el('code', { text: shown(h.value) }))))) : el('p', { class: 'muted', text: 'No headers.' }),
      el('p', null, 'Body ', toggle), body);
  }

  // ---- the router: #page?param=value
  function route() {
    const [name, query] = location.hash.replace(/^#/, '').split('?');
    const page = pages[name] ? name : 'overview';
    const params = Object.fromEntries(new URLSearchParams(query || ''));
    for (const a of document.querySelectorAll('header nav a')) a.classList.toggle('active', a.dataset.page === page);
    document.title = `Quiver · ${page}`;
    current = pages[page](params);
    this_ = current;
    $('#page').replaceChildren(current.el, el('p', { id: 'page-error', class: 'bad' }));
    $('#page').dataset.page = page;
    if (state.status && current.update) {
      try { current.update(); } catch (e) { showError(e); }
    }
  }
  window.addEventListener('hashchange', route);
  api('status').then((s) => { state.status = s; }).catch(() => {}).finally(() => { route(); poll(); });
})();
