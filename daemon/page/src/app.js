/* cniguard status page.
 *
 * Plain ES2020 classic script: no modules, no build step, no eval. Every string it shows
 * came from the network (or from a report file), so it reaches the DOM only through
 * textContent, text nodes and setAttribute, never innerHTML.
 *
 * Two modes:
 *  - live: poll /live.json every 5 s and re-render one node;
 *  - report: #report-data holds a Report (several nodes plus timeline marks); render once.
 * The report is a single HTML file with this script inlined, possibly opened from file://,
 * so nothing here depends on the script's own URL.
 */
(function () {
  'use strict';

  const POLL_MS = 5000;
  const FETCH_TIMEOUT_MS = 4000;
  // Series colours avoid the red / amber / green used for states.
  const PALETTE = ['#2563eb', '#9333ea', '#0891b2', '#db2777', '#475569',
    '#0d9488', '#92400e', '#4f46e5', '#be185d', '#0369a1'];
  const MARK_COLOURS = { step: '#1e293b', fault: '#c026d3', repair: '#059669', rollback: '#dc2626' };
  const AXIS = { stroke: '#4b5563', grid: { stroke: '#e5e7eb', width: 1 }, ticks: { stroke: '#d1d5db', width: 1 } };

  // ---- error collection (a test hook: the headless test reads body[data-errors]) ----------

  let errorCount = 0;
  function recordError(message) {
    errorCount += 1;
    const pre = document.getElementById('errors');
    if (pre) pre.append(document.createTextNode(message + '\n'));
    if (document.body) document.body.dataset.errors = String(errorCount);
  }
  function describe(value) {
    if (value instanceof Error) return value.stack || String(value);
    if (typeof value === 'string') return value;
    try { return JSON.stringify(value); } catch (_) { return String(value); }
  }
  const originalConsoleError = console.error.bind(console);
  console.error = function (...args) {
    recordError(args.map(describe).join(' '));
    originalConsoleError(...args);
  };
  window.onerror = function (message, source, line, column, error) {
    recordError(error ? describe(error) : `${message} at ${source}:${line}:${column}`);
    return false;
  };
  window.addEventListener('unhandledrejection', (event) => {
    recordError('unhandled rejection: ' + describe(event.reason));
  });
  // The daemon serves a strict CSP: a blocked inline style or script is a bug of this page.
  document.addEventListener('securitypolicyviolation', (event) => {
    recordError(`CSP blocked ${event.violatedDirective}: ${event.blockedURI || 'inline'}`);
  });

  // ---- defensive readers: the JSON may lack any field or hold the wrong type -------------

  const arr = (v) => (Array.isArray(v) ? v : []);
  const obj = (v) => (v && typeof v === 'object' && !Array.isArray(v) ? v : {});
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);
  const str = (v) => (v == null ? '' : typeof v === 'object' ? describe(v) : String(v));
  // A class-name / attribute-safe token (classList rejects whitespace).
  const token = (v) => str(v).toLowerCase().replace(/[^a-z0-9_-]/g, '_') || 'unknown';

  // ---- DOM and formatting helpers ---------------------------------------------------------

  /** createElement with attributes and children; strings become text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child == null) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }
  const emptyNote = (text) => el('p', { class: 'empty' }, text);

  function fmtDuration(seconds) {
    const s0 = num(seconds);
    if (s0 == null || s0 < 0) return '?';
    const s = Math.round(s0);
    const m = Math.floor(s / 60);
    const h = Math.floor(m / 60);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${m}m ${s % 60}s`;
    if (s < 86400) return `${h}h ${m % 60}m`;
    return `${Math.floor(h / 24)}d ${h % 24}h`;
  }
  function fmtNum(v) {
    const n = num(v);
    if (n == null) return '–';
    if (n === 0 || Number.isInteger(n)) return String(n);
    const a = Math.abs(n);
    if (a >= 100) return n.toFixed(0);
    if (a >= 1) return String(Number(n.toFixed(2)));
    return String(Number(n.toPrecision(2)));
  }
  function fmtRatio(r) {
    const n = num(r);
    if (n == null) return '–';
    if (n >= 1) return '100%';
    return `${Math.floor(n * 1000) / 10}%`; // floor: 99.96% must not read as 100%
  }
  function fmtClock(unixSeconds, withDate) {
    const n = num(unixSeconds);
    if (n == null) return '?';
    const d = new Date(n * 1000);
    const time = d.toLocaleTimeString([], { hour12: false });
    return withDate ? `${d.toLocaleDateString()} ${time}` : time;
  }

  function fmtTick(unixSeconds, incr) {
    const d = new Date(unixSeconds * 1000);
    const two = (v) => String(v).padStart(2, '0');
    if (incr >= 86400) return `${d.getMonth() + 1}/${d.getDate()}`;
    const hm = `${two(d.getHours())}:${two(d.getMinutes())}`;
    return incr < 60 ? `${hm}:${two(d.getSeconds())}` : hm;
  }

  // ---- chart series: one builder per chart, from a Live's history ---------------------------

  /** The series at `key`, exactly n points long, non-numbers as null (a gap). */
  function column(values, n, scale) {
    const src = arr(values);
    return Array.from({ length: n }, (_, i) => (num(src[i]) == null ? null : src[i] * (scale || 1)));
  }
  function mapSeries(map, n, label, first) {
    const keys = Object.keys(map);
    const ordered = (first || []).filter((k) => keys.includes(k)).concat(keys.filter((k) => !(first || []).includes(k)));
    return ordered.map((key, i) => ({
      label: label(key), stroke: PALETTE[i % PALETTE.length], values: column(map[key], n),
    }));
  }
  const VXLAN_NAMES = { 8472: '8472 Flannel', 4789: '4789 Calico' };
  const POD_NAMES = { veth: 'veth* (Flannel)', cali: 'cali* (Calico)' };

  function latencySeries(h, n) {
    const p50 = obj(h.localhost_p50_seconds);
    const p99 = obj(h.localhost_p99_seconds);
    const pods = [...new Set([...Object.keys(p50), ...Object.keys(p99)])];
    const out = [];
    pods.forEach((pod, i) => {
      const stroke = PALETTE[i % PALETTE.length];
      if (has(p50, pod)) out.push({ label: `${pod} p50`, stroke, values: column(p50[pod], n, 1000) });
      if (has(p99, pod)) out.push({ label: `${pod} p99`, stroke, dash: [6, 4], values: column(p99[pod], n, 1000) });
    });
    return out;
  }

  // y always starts at 0 (these are rates and counts); `floor` keeps a reference line in view.
  const zeroBased = (floor) => (u, min, max) => [0, Math.max(num(max) || 0, floor) * 1.1];

  const CHARTS = [
    { name: 'vxlan', title: 'VXLAN packets/s by UDP port', range: zeroBased(1),
      build: (h, n) => mapSeries(obj(h.vxlan_packets_per_second), n, (k) => VXLAN_NAMES[k] || `port ${k}`, ['8472', '4789']) },
    { name: 'pods', title: 'Pod traffic packets/s: veth* (Flannel) vs cali* (Calico)', range: zeroBased(1),
      build: (h, n) => mapSeries(obj(h.pod_packets_per_second), n, (k) => POD_NAMES[k] || k, ['veth', 'cali']) },
    { name: 'localhost', title: 'In-pod localhost latency, ms (p50 solid, p99 dashed)',
      range: zeroBased(1.2), refLine: { value: 1, label: '1 ms criterion' }, build: latencySeries },
    { name: 'drops', title: 'Drops/s by reason', range: zeroBased(1),
      build: (h, n) => mapSeries(obj(h.drops_per_second), n, (k) => k) },
    { name: 'bgp', title: 'BGP sessions up', range: zeroBased(1), stepped: true, integer: true,
      // No array (or an empty one) means no BGP data at all, so no series, not a gap.
      build: (h, n) => (arr(h.bgp_sessions_up).length
        ? [{ label: 'sessions up', stroke: PALETTE[0], values: column(h.bgp_sessions_up, n) }] : []) },
  ];

  // ---- uPlot plugins ------------------------------------------------------------------------

  function strokeLine(ctx, x1, y1, x2, y2) {
    ctx.beginPath();
    ctx.moveTo(x1, y1);
    ctx.lineTo(x2, y2);
    ctx.stroke();
  }

  /** data-drawn="true" only once the canvas really holds a painted pixel. */
  function drawnPlugin(container) {
    return { hooks: { draw: (u) => {
      if (container.dataset.drawn === 'true') return;
      const canvas = u.ctx.canvas;
      if (!canvas.width || !canvas.height) return;
      const pixels = u.ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 3; i < pixels.length; i += 4) {
        if (pixels[i] !== 0) { container.dataset.drawn = 'true'; return; }
      }
    } } };
  }

  /** Vertical timeline marks (report mode): a thin dashed line plus a short label each. */
  function marksPlugin(marks) {
    return { hooks: { draw: (u) => {
      if (!marks.length) return;
      const ctx = u.ctx;
      const px = uPlot.pxRatio || 1;
      const { left, top, width, height } = u.bbox;
      const rows = [[], [], []]; // label extents already placed, per text row
      ctx.save();
      // Alignment set explicitly: uPlot leaves its axes' alignment on the context.
      Object.assign(ctx, { font: `${Math.round(10 * px)}px system-ui, sans-serif`,
        textAlign: 'left', textBaseline: 'alphabetic', lineWidth: px });
      ctx.setLineDash([3 * px, 2 * px]);
      for (const mark of marks) {
        const x = Math.round(u.valToPos(mark.t, 'x', true));
        if (!(x >= left && x <= left + width)) continue;
        const colour = MARK_COLOURS[mark.kind] || '#4b5563';
        ctx.strokeStyle = colour;
        strokeLine(ctx, x + 0.5, top, x + 0.5, top + height);
        const spot = placeLabel(ctx, rows, x, left + width, px, [`${mark.n} ${mark.label}`, String(mark.n)]);
        const ty = top + (spot.row + 1) * 12 * px;
        ctx.fillStyle = 'rgba(255,255,255,0.85)';
        ctx.fillRect(spot.x - px, ty - 10 * px, spot.width + 2 * px, 12 * px);
        ctx.fillStyle = colour;
        ctx.fillText(spot.text, spot.x, ty);
      }
      ctx.restore();
    } } };
  }

  /** First text row where a label (full, else just its number) fits without overlap. */
  function placeLabel(ctx, rows, x, right, px, texts) {
    for (const text of texts) {
      const width = ctx.measureText(text).width;
      // Near the right edge a label goes to the left of its line.
      const lx = x + 3 * px + width > right ? x - 3 * px - width : x + 3 * px;
      const row = rows.findIndex((placed) => placed.every(([a, b]) => lx + width + 4 * px < a || lx > b + 4 * px));
      if (row >= 0) {
        rows[row].push([lx, lx + width]);
        return { text, x: lx, width, row };
      }
    }
    const text = texts[texts.length - 1]; // crowded everywhere: overlap on the first row
    return { text, x: x + 3 * px, width: ctx.measureText(text).width, row: 0 };
  }

  /** A dashed horizontal reference line (the runbook's 1 ms localhost criterion). */
  function refLinePlugin(ref) {
    return { hooks: { draw: (u) => {
      const ctx = u.ctx;
      const px = uPlot.pxRatio || 1;
      const { left, top, width, height } = u.bbox;
      const y = Math.round(u.valToPos(ref.value, 'y', true));
      if (!(y >= top && y <= top + height)) return;
      ctx.save();
      Object.assign(ctx, { strokeStyle: '#dc2626', fillStyle: '#dc2626', lineWidth: px,
        font: `${Math.round(10 * px)}px system-ui, sans-serif`, textAlign: 'right', textBaseline: 'alphabetic' });
      ctx.setLineDash([4 * px, 3 * px]);
      strokeLine(ctx, left, y + 0.5, left + width, y + 0.5);
      ctx.fillText(ref.label, left + width - 2 * px, y - 3 * px);
      ctx.restore();
    } } };
  }

  // ---- chart lifecycle: create once, setData on re-render, re-create if series change -------

  const charts = new WeakMap(); // .chart container -> { u, signature }
  const resizer = typeof ResizeObserver === 'function' ? new ResizeObserver(onResize) : null;
  if (!resizer) window.addEventListener('resize', () => document.querySelectorAll('.chart').forEach(fitChart));

  const chartHeight = () => (window.innerWidth < 600 ? 170 : 210);
  const chartWidth = (container) => Math.max(120, Math.floor(container.clientWidth || 300));

  // Resizing inside the observer callback would change the observed boxes in the same frame
  // ("ResizeObserver loop" error): collect the containers and resize in a later task.
  // (Not requestAnimationFrame: it does not run in background tabs or headless test runs.)
  const pendingFits = new Set();
  function onResize(entries) {
    if (!pendingFits.size) {
      setTimeout(() => {
        pendingFits.forEach(fitChart);
        pendingFits.clear();
      }, 30);
    }
    for (const entry of entries) pendingFits.add(entry.target);
  }
  function fitChart(container) {
    const chart = charts.get(container);
    if (!chart) return;
    const width = chartWidth(container);
    const height = chartHeight();
    // The legend changes the container's height; only a width change needs a resize.
    if (width !== chart.u.width || height !== chart.u.height) chart.u.setSize({ width, height });
  }

  function chartOptions(spec, series, container, marks) {
    const stepped = spec.stepped && uPlot.paths && uPlot.paths.stepped
      ? uPlot.paths.stepped({ align: 1 }) : undefined;
    const plugins = [drawnPlugin(container), marksPlugin(marks)];
    if (spec.refLine) plugins.push(refLinePlugin(spec.refLine));
    return {
      width: chartWidth(container),
      height: chartHeight(),
      scales: { x: { time: true }, y: { range: spec.range } },
      series: [{}].concat(series.map((s) => ({
        label: s.label, stroke: s.stroke, width: 1.5, dash: s.dash, paths: stepped,
        value: (u, v) => fmtNum(v),
      }))),
      axes: [
        Object.assign({}, AXIS, { space: 50, values: (u, ticks, axis, space, incr) => ticks.map((t) => fmtTick(t, incr)) }),
        Object.assign({}, AXIS, { size: 46, values: (u, ticks) => ticks.map(fmtNum) },
          spec.integer ? { incrs: [1, 2, 5, 10, 20, 50, 100] } : {}),
      ],
      cursor: { drag: { x: true, y: false } },
      plugins,
    };
  }

  function updateChart(container, spec, history, marks) {
    if (typeof uPlot !== 'function') return; // already reported by start()
    const times = arr(history.t).map((v) => num(v));
    const n = times.length;
    const series = spec.build(history, n);
    const data = [times].concat(series.map((s) => s.values));
    const signature = series.map((s) => `${s.label}|${s.stroke}|${s.dash ? 'dash' : ''}`).join('\n');
    const existing = charts.get(container);
    if (existing && existing.signature === signature) {
      existing.u.setData(data);
    } else {
      if (existing) existing.u.destroy();
      delete container.dataset.drawn;
      const u = new uPlot(chartOptions(spec, series, container, marks), data, container);
      charts.set(container, { u, signature });
      if (resizer) resizer.observe(container);
    }
    container.dataset.series = String(series.length);
  }

  // ---- node section skeleton: built once per node, then filled on every render -----------

  function nodeSkeleton() {
    const parts = { header: el('header', { class: 'node-header' }), charts: {} };
    const cards = el('div', { class: 'cards' });
    const card = (title, wide) => {
      const body = el('div', { class: 'card-body' });
      cards.append(el('section', { class: wide ? 'card wide' : 'card' }, el('h3', {}, title), body));
      return body;
    };
    parts.findings = card('Findings', true);
    parts.triggers = card('Rollback triggers', true);
    for (const spec of CHARTS) {
      const container = el('div', { class: 'chart', 'data-chart': spec.name });
      const note = el('p', { class: 'note' });
      cards.append(el('section', { class: 'card chart-card' }, el('h3', {}, spec.title), container, note));
      parts.charts[spec.name] = { container, note };
    }
    parts.checks = card('Checks (latest result, success over 5 min)', true);
    parts.localhost = card('In-pod localhost services', true);
    parts.root = el('section', { class: 'node' }, parts.header, cards);
    return parts;
  }

  function renderHeader(parts, status, live) {
    const phase = obj(status.phase);
    const phaseName = phase.phase == null ? 'unknown' : str(phase.phase);
    const since = num(phase.since_seconds);
    const text = phase.phase == null ? 'phase unknown'
      : since == null ? phaseName : `${phaseName} for ${fmtDuration(since)}`;
    const phaseEl = el('span', {
      class: `phase phase-${token(phaseName)}`, 'data-role': 'phase', 'data-phase': phaseName,
      id: live ? 'phase' : null,
    }, text);
    const node = str(status.node) || 'unknown node';
    parts.root.dataset.node = node;
    const title = el('div', { class: 'node-title' },
      el('h2', { 'data-role': 'node' }, node), phaseEl,
      status.version == null ? null : el('span', { class: 'version' }, `cniguard ${str(status.version)}`));
    parts.header.replaceChildren(title);
    if (status.rollback_recommended === true) parts.header.append(rollbackBanner(status));
  }

  function rollbackBanner(status) {
    const firing = arr(status.triggers).map(obj)
      .filter((t) => t.state === 'active' && t.severity === 'rollback').map((t) => str(t.trigger));
    return el('div', { class: 'rollback', role: 'alert' }, 'ROLLBACK RECOMMENDED',
      firing.length ? el('span', { class: 'why' }, `active: ${firing.join(', ')}`) : null);
  }

  // ---- tables and lists -------------------------------------------------------------------

  /** A table; `stack` lets CSS turn rows into labelled blocks on a phone (data-label). */
  function table(headings, rows, stack) {
    if (stack) {
      for (const row of rows) {
        Array.from(row.children).forEach((cell, i) => cell.setAttribute('data-label', headings[i] || ''));
      }
    }
    return el('div', { class: 'table-wrap' }, el('table', { class: stack ? 'stack' : null },
      el('thead', {}, el('tr', {}, headings.map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows)));
  }

  function triggerTiming(t) {
    switch (t.state) {
      case 'pending': return `pending ${fmtDuration(t.pending_seconds)} of ${fmtDuration(t.for_seconds)}`;
      case 'active': return `active ${fmtDuration(t.active_seconds)}`;
      case 'clearing': return `clearing, active ${fmtDuration(t.active_seconds)}`;
      default: return num(t.for_seconds) == null ? '–' : `fires after ${fmtDuration(t.for_seconds)}`;
    }
  }

  function renderTriggers(target, triggers) {
    if (!triggers.length) return target.replaceChildren(emptyNote('No trigger reported.'));
    const rows = triggers.map(obj).map((t) => {
      const state = token(t.state);
      const clear = num(t.clear_threshold) == null ? '' : ` (clears below ${fmtNum(t.clear_threshold)})`;
      return el('tr', { class: `trigger state-${state}`, 'data-trigger': str(t.trigger) },
        el('td', { class: 'mono' }, str(t.trigger)),
        el('td', {}, str(t.severity)),
        el('td', {}, el('span', { class: 'state-label' }, str(t.state))),
        el('td', { class: 'num' }, `${fmtNum(t.value)} / ${fmtNum(t.threshold)}${clear}`),
        el('td', { class: 'num' }, triggerTiming(t)),
        el('td', {}, str(t.detail)));
    });
    target.replaceChildren(table(['Trigger', 'Severity', 'State', 'Value / threshold', 'Timing', 'Detail'], rows, true));
  }

  const checkClass = (latest) => (latest === true ? 'ok' : latest === false ? 'failing' : 'unknown');
  const CHECK_RANK = { failing: 2, unknown: 1, ok: 0 };

  /** Matrix: rows = check kind, columns = peer (target when no peer); worst result wins a cell. */
  function renderChecks(target, checks) {
    if (!checks.length) return target.replaceChildren(emptyNote('No check reported.'));
    const kinds = [];
    const columns = [];
    const cells = new Map();
    for (const c of checks.map(obj)) {
      const kind = str(c.check);
      const col = str(c.peer) || str(c.target);
      if (!kinds.includes(kind)) kinds.push(kind);
      if (!columns.includes(col)) columns.push(col);
      const key = JSON.stringify([kind, col]);
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(c);
    }
    const rows = kinds.map((kind) => el('tr', {}, el('th', { scope: 'row', class: 'mono' }, kind),
      columns.map((col) => checkCell(kind, col, cells.get(JSON.stringify([kind, col]))))));
    target.replaceChildren(table([''].concat(columns), rows));
  }

  function checkCell(kind, col, entries) {
    if (!entries) return el('td', { class: 'empty' });
    const cls = entries.map((c) => checkClass(c.latest))
      .reduce((a, b) => (CHECK_RANK[b] > CHECK_RANK[a] ? b : a), 'ok');
    const stale = entries.some((c) => c.stale === true);
    const failures = entries.map((c) => str(c.last_failure)).filter(Boolean);
    const title = entries.map((c) => `${str(c.target)}: latest ${str(c.latest) || 'unknown'}`
      + (c.stale === true ? ' (stale)' : '') + (c.last_failure == null ? '' : `, last failure: ${str(c.last_failure)}`));
    return el('td', { class: `check ${cls}`, 'data-check': kind, 'data-peer': col,
      'data-stale': stale ? 'true' : null, title: title.join('\n') },
    entries.map((c) => fmtRatio(c.success_ratio_5m)).join(' / '),
    stale ? el('small', {}, 'stale') : null,
    failures.length ? el('small', {}, failures[failures.length - 1]) : null);
  }

  function renderLocalhost(target, pods) {
    if (!pods.length) return target.replaceChildren(emptyNote('No in-pod localhost service watched.'));
    const rows = pods.map(obj).map((p) => {
      const healthy = p.healthy === true;
      const listening = arr(p.listening_on).map(str).join(', ');
      return el('tr', { class: `localhost ${healthy ? 'healthy' : 'unhealthy'}`, 'data-netns': str(p.netns) },
        el('td', { class: 'mono' }, str(p.netns)),
        el('td', { class: 'num' }, str(p.port)),
        el('td', {}, str(p.protocol)),
        el('td', {}, el('span', { class: healthy ? 'healthy-yes' : 'healthy-no' },
          p.healthy == null ? 'unknown' : healthy ? 'yes' : 'no')),
        el('td', {}, el('strong', {}, str(p.cause)), ' ', str(p.explanation),
          p.failure == null ? null : el('small', {}, `failure: ${str(p.failure)}`),
          listening ? el('small', {}, `listening on: ${listening}`) : null));
    });
    target.replaceChildren(table(['Pod netns', 'Port', 'Protocol', 'Healthy', 'Cause and explanation'], rows, true));
  }

  // Raised critical findings first: they are what the operator must fix now.
  const SEVERITY_RANK = { critical: 0, warning: 1, info: 2 };
  const STATE_RANK = { raised: 0, pending: 1, clearing: 2 };
  const rank = (ranks, key) => (has(ranks, key) ? ranks[key] : 3);

  function renderFindings(target, findings) {
    if (!findings.length) return target.replaceChildren(emptyNote('No finding'));
    const sorted = findings.map(obj).slice().sort((a, b) =>
      rank(STATE_RANK, a.state) - rank(STATE_RANK, b.state)
      || rank(SEVERITY_RANK, a.severity) - rank(SEVERITY_RANK, b.severity));
    const items = sorted.map((f) => el('li', {
      class: `finding severity-${token(f.severity)} state-${token(f.state)}`, 'data-finding': str(f.finding),
    },
    el('div', { class: 'headline' },
      el('span', { class: 'badge' }, str(f.severity)),
      el('span', { class: 'name' }, str(f.finding)),
      el('span', { class: 'subject' }, str(f.subject)),
      el('span', { class: 'state' }, `${str(f.state)}${num(f.seconds) == null ? '' : ` for ${fmtDuration(f.seconds)}`}`)),
    f.evidence == null ? null : el('p', { class: 'evidence' }, str(f.evidence)),
    f.fix == null ? null : el('p', { class: 'fix' }, el('strong', {}, 'fix:'), el('span', { class: 'fix-text' }, str(f.fix)))));
    target.replaceChildren(el('ul', { class: 'findings' }, items));
  }

  // ---- rendering one node; each part guarded so one bad field does not blank the page -----

  function guarded(what, fn) {
    try { fn(); } catch (e) { console.error(`rendering ${what} failed:`, e); }
  }

  function renderNode(parts, live, marks, isLive) {
    const l = obj(live);
    const status = obj(l.status);
    const history = obj(l.history);
    guarded('header', () => renderHeader(parts, status, isLive));
    guarded('findings', () => renderFindings(parts.findings, arr(status.findings)));
    guarded('triggers', () => renderTriggers(parts.triggers, arr(status.triggers)));
    for (const spec of CHARTS) {
      guarded(`chart ${spec.name}`, () => {
        const { container, note } = parts.charts[spec.name];
        updateChart(container, spec, history, marks);
        note.textContent = arr(history.t).length ? '' : 'No history yet.';
      });
    }
    guarded('checks', () => renderChecks(parts.checks, arr(status.checks)));
    guarded('localhost', () => renderLocalhost(parts.localhost, arr(status.localhost)));
  }

  /** Flags the first complete render; a timeout lets uPlot's microtask draws run first. */
  function markReady(mode) {
    if (document.body.dataset.ready === 'true') return;
    setTimeout(() => {
      document.body.dataset.mode = mode;
      document.body.dataset.ready = 'true';
    }, 0);
  }

  // ---- live mode ----------------------------------------------------------------------------

  let liveParts = null;
  let lastSuccess = null;

  /** The "daemon unreachable" banner exists only while the last poll failed. */
  function setStale(problem) {
    let banner = document.getElementById('stale');
    if (problem == null) return banner && banner.remove();
    if (!banner) {
      banner = el('div', { id: 'stale', role: 'status' });
      document.getElementById('nodes').before(banner);
    }
    banner.textContent = `daemon unreachable (${problem})`
      + (lastSuccess ? ` — showing data from ${fmtClock(lastSuccess / 1000)}` : ' — no data yet');
  }

  async function fetchLive() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch('/live.json', { cache: 'no-store', signal: controller.signal });
      if (!response.ok) return { problem: `HTTP ${response.status}` };
      const live = await response.json();
      return live && typeof live === 'object' ? { live } : { problem: 'bad JSON' };
    } catch (e) {
      // Expected while the daemon restarts: shown in the banner, not counted as an error.
      const problem = e && e.name === 'AbortError' ? 'timed out'
        : e instanceof SyntaxError ? 'bad JSON' : 'no answer';
      return { problem };
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    try {
      const result = await fetchLive();
      if (!liveParts) {
        liveParts = nodeSkeleton();
        document.getElementById('nodes').append(liveParts.root);
      }
      if (result.live) {
        lastSuccess = Date.now();
        setStale(null);
        renderNode(liveParts, result.live, [], true);
        document.getElementById('updated').textContent = `updated ${fmtClock(lastSuccess / 1000)}`;
      } else {
        setStale(result.problem);
        // Before any data, still fill the skeleton (empty charts and lists) so it reads as a page.
        if (!lastSuccess) renderNode(liveParts, {}, [], true);
      }
      markReady('live');
    } catch (e) {
      console.error('live update failed:', e);
    } finally {
      setTimeout(poll, POLL_MS); // a bug in one render must not stop the updates
    }
  }

  // ---- report mode --------------------------------------------------------------------------

  function parseMarks(report) {
    return arr(report.marks).map(obj)
      .filter((m) => num(m.t) != null)
      .map((m) => ({ t: m.t, label: str(m.label), kind: token(m.kind) }))
      .sort((a, b) => a.t - b.t)
      .map((m, i) => Object.assign(m, { n: i + 1 })); // the number charts fall back to
  }

  function renderReportHeader(report, marks) {
    const items = marks.map((m) => el('li', { class: `mark kind-${m.kind}`, 'data-kind': m.kind },
      el('b', {}, String(m.n)), ' ', el('time', {}, fmtClock(m.t)), m.label));
    document.getElementById('report-header').replaceChildren(el('section', { class: 'report-info' },
      el('h2', {}, `Report generated ${fmtClock(report.generated_at, true)}`),
      marks.length ? el('ol', { class: 'marks' }, items) : emptyNote('No timeline mark.')));
  }

  function renderReport(raw) {
    let report;
    try {
      report = obj(JSON.parse(raw));
    } catch (e) {
      console.error('the embedded report is not valid JSON:', e);
      document.getElementById('nodes').replaceChildren(emptyNote('This report could not be read.'));
      return;
    }
    const marks = parseMarks(report);
    guarded('report header', () => renderReportHeader(report, marks));
    const main = document.getElementById('nodes');
    const nodes = arr(report.nodes);
    if (!nodes.length) main.append(emptyNote('The report holds no node.'));
    for (const live of nodes) {
      const parts = nodeSkeleton();
      main.append(parts.root); // attached first so charts get their real width
      renderNode(parts, live, marks, false);
    }
    document.getElementById('updated').textContent = 'report';
  }

  // ---- start --------------------------------------------------------------------------------

  function start() {
    document.body.dataset.errors = String(errorCount);
    if (typeof uPlot !== 'function') console.error('uPlot did not load: charts cannot be drawn');
    const dataEl = document.getElementById('report-data');
    const raw = dataEl ? dataEl.textContent.trim() : '';
    if (raw) {
      renderReport(raw);
      markReady('report');
    } else {
      poll();
    }
  }

  // When inlined into a report the script may run before the body is parsed.
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
