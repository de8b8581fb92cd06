// The Refed run viewer: reads the gzip+base64 JSON blobs of this page (graph/viewer/data.py
// says what they hold), shows the run, and lists its candidates a page at a time.
// Texts are inserted as text nodes only. window.refedViewer reports timings and state
// (used by the tests and the benchmark).
'use strict';
(() => {
  const viewer = {
    firstPage: null, ready: null, busy: true, renders: 0, error: null, searchMs: null,
  };
  window.refedViewer = viewer;

  // ----------------------------------------------------------------- DOM helpers
  const $ = (id) => document.getElementById(id);
  function el(tag, props, ...kids) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'text') node.textContent = value;
      else if (key === 'cls') node.className = value;
      else if (key === 'data') Object.assign(node.dataset, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      node.append(kid instanceof Node ? kid : String(kid));
    }
    return node;
  }
  const grouped = new Intl.NumberFormat('en-US');
  function num(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return '–';
    if (typeof value !== 'number') return String(value);
    if (digits !== undefined) return value.toFixed(digits);
    return Number.isInteger(value) ? grouped.format(value) : value.toFixed(2);
  }
  const plain = (value) => (value !== null && typeof value === 'object'
    ? JSON.stringify(value) : num(value));
  const idle = () => new Promise((resolve) => setTimeout(resolve, 0));
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
  const sampleHref = (id) => '#sample=' + encodeURIComponent(id);
  const refHref = (id) => '#ref=' + encodeURIComponent(id);

  // ------------------------------------------------------------------ the data
  // The meta blob and the first text chunk come before this script, the other chunks
  // after it: the first page shows while the browser still reads the rest of the file.
  const parsed = new Promise((resolve) => {
    if (document.readyState === 'loading') {
      document.addEventListener('DOMContentLoaded', () => resolve(), { once: true });
    } else resolve();
  });
  async function gunzip(bytes) {
    const stream = new DecompressionStream('gzip');
    const writer = stream.writable.getWriter();
    writer.write(bytes).catch(() => {}); // a bad blob fails the reads below
    writer.close().catch(() => {});
    const reader = stream.readable.getReader();
    const parts = []; let size = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value); size += value.length;
    }
    const all = new Uint8Array(size); let at = 0;
    for (const part of parts) { all.set(part, at); at += part.length; }
    return new TextDecoder().decode(all);
  }
  async function unpack(id) {
    let node = $(id);
    if (!node) { await parsed; node = $(id); }
    if (!node) throw new Error('this page has no data block ' + id);
    const b64 = node.textContent.trim();
    node.remove();
    let bytes;
    if (typeof Uint8Array.fromBase64 === 'function') {
      bytes = Uint8Array.fromBase64(b64);
    } else {
      const binary = atob(b64);
      bytes = new Uint8Array(binary.length);
      for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    }
    return JSON.parse(await gunzip(bytes));
  }

  let M = null; // meta
  let C = null; // columns
  let n = 0;
  const cols = {};
  const idIndex = new Map();
  const refIndex = new Map();
  const chunks = { s: [], r: [] };
  const chunk = (kind, i) => (chunks[kind][i] ||= unpack('blob-' + kind + i));
  const sampleRow = async (i) => (await chunk('s', Math.floor(i / M.chunk)))[i % M.chunk];
  const refRow = async (r) => (await chunk('r', Math.floor(r / M.ref_chunk)))[r % M.ref_chunk];

  let allRead = null;
  function readAll() {
    allRead ||= (async () => {
      const total = Math.ceil(n / M.chunk);
      for (let c = 0; c < total; c++) {
        await chunk('s', c);
        if (c % 8 === 7) {
          $('loading').textContent = `${num(n)} candidates; reading their texts… ${Math.round(100 * (c + 1) / total)}%`;
          await idle();
        }
      }
      viewer.ready = performance.now();
      $('loading').textContent = `${num(n)} candidates, all read.`;
    })();
    return allRead;
  }

  function columns() {
    C = M.cols;
    n = M.n;
    cols.status = Uint8Array.from(C.status);
    cols.outcome = Int32Array.from(C.outcome);
    cols.feature = Int32Array.from(C.feature);
    cols.filter = Int32Array.from(C.filter);
    cols.ref = Int32Array.from(C.ref);
    cols.mean = Float64Array.from(C.mean, (v) => (v === null ? NaN : v));
    cols.score = {};
    for (const name of M.criteria) {
      cols.score[name] = Float64Array.from(C.scores[name], (v) => (v === null ? NaN : v));
    }
    C.id.forEach((id, i) => idIndex.set(id, i));
    M.refs.id.forEach((id, r) => refIndex.set(id, r));
  }

  // ------------------------------------------------------------ the word diff
  // Myers' O(ND) shortest edit script over word lists; ops are [kind, i, j]:
  // 0 = the same word (a[i] = b[j]), -1 = a[i] deleted, 1 = b[j] inserted.
  const MAX_EDITS = 3000;
  function myers(a, b) {
    const n1 = a.length; const m1 = b.length; const max = n1 + m1; const off = max + 1;
    const v = new Int32Array(2 * max + 3);
    const trace = [];
    for (let d = 0; d <= Math.min(max, MAX_EDITS); d++) {
      trace.push(v.slice(off - d - 1, off + d + 2));
      for (let k = -d; k <= d; k += 2) {
        let x = (k === -d || (k !== d && v[off + k - 1] < v[off + k + 1]))
          ? v[off + k + 1] : v[off + k - 1] + 1;
        let y = x - k;
        while (x < n1 && y < m1 && a[x] === b[y]) { x++; y++; }
        v[off + k] = x;
        if (x >= n1 && y >= m1) return backtrack(trace, n1, m1);
      }
    }
    return null; // too different: shown as replaced whole
  }
  function backtrack(trace, n1, m1) {
    const ops = [];
    let x = n1; let y = m1;
    for (let d = trace.length - 1; d >= 0; d--) {
      const snap = trace[d];
      const at = (k) => snap[k + d + 1];
      const k = x - y;
      const prevK = (k === -d || (k !== d && at(k - 1) < at(k + 1))) ? k + 1 : k - 1;
      const prevX = at(prevK); const prevY = prevX - prevK;
      while (x > prevX && y > prevY) { ops.push([0, x - 1, y - 1]); x--; y--; }
      if (d > 0) {
        if (x === prevX) ops.push([1, -1, y - 1]); else ops.push([-1, x - 1, -1]);
      }
      x = prevX; y = prevY;
    }
    return ops.reverse();
  }
  function diffOps(a, b) {
    const n1 = a.length; const m1 = b.length;
    let pre = 0;
    while (pre < n1 && pre < m1 && a[pre] === b[pre]) pre++;
    let suf = 0;
    while (suf < n1 - pre && suf < m1 - pre && a[n1 - 1 - suf] === b[m1 - 1 - suf]) suf++;
    const ops = [];
    for (let i = 0; i < pre; i++) ops.push([0, i, i]);
    const middle = myers(a.slice(pre, n1 - suf), b.slice(pre, m1 - suf));
    if (middle) {
      for (const [kind, i, j] of middle) {
        ops.push([kind, i < 0 ? -1 : i + pre, j < 0 ? -1 : j + pre]);
      }
    } else {
      for (let i = pre; i < n1 - suf; i++) ops.push([-1, i, -1]);
      for (let j = pre; j < m1 - suf; j++) ops.push([1, -1, j]);
    }
    for (let s = suf; s > 0; s--) ops.push([0, n1 - s, m1 - s]);
    return ops;
  }
  viewer.diff = diffOps;
  const words = (text) => text.match(/^\s+|\S+\s*/g) || [];
  function diffNode(first, improved) {
    const a = words(first); const b = words(improved);
    const ops = diffOps(a.map((w) => w.trimEnd()), b.map((w) => w.trimEnd()));
    const box = el('div', { cls: 'text diff' });
    let kind = null; let buffer = '';
    const flush = () => {
      if (!buffer) return;
      box.append(kind === 0 ? document.createTextNode(buffer)
        : el(kind < 0 ? 'del' : 'ins', { text: buffer }));
      buffer = '';
    };
    for (const [k, i, j] of ops) {
      if (k !== kind) { flush(); kind = k; }
      buffer += k < 0 ? a[i] : b[j];
    }
    flush();
    return box;
  }

  // ------------------------------------------------------------------- search
  let query = null; // the RegExp of the current search
  let hits = null; // Uint8Array: 1 = the sample matches the current search
  const escapeRe = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  function rowMatches(row, re) {
    for (let f = 0; f < 6; f++) if (row[f] && re.test(row[f])) return true;
    return !!(row[6] && row[6].match_text && re.test(row[6].match_text));
  }
  async function search(text, token) {
    await readAll();
    const started = performance.now();
    const re = new RegExp(escapeRe(text), 'i');
    const found = new Uint8Array(n);
    const total = Math.ceil(n / M.chunk);
    for (let c = 0; c < total; c++) {
      const rows = await chunk('s', c);
      for (let j = 0; j < rows.length; j++) {
        const i = c * M.chunk + j;
        if (rowMatches(rows[j], re) || re.test(C.id[i])) found[i] = 1;
      }
      if (c % 16 === 15) {
        await idle();
        if (token !== latest) return null;
      }
    }
    viewer.searchMs = performance.now() - started;
    return found;
  }
  function marked(text) {
    if (!query || !text) return [text];
    const global = new RegExp(query.source, 'gi');
    const out = []; let last = 0;
    for (const m of text.matchAll(global)) {
      if (!m[0]) break;
      out.push(text.slice(last, m.index), el('mark', { text: m[0] }));
      last = m.index + m[0].length;
    }
    out.push(text.slice(last));
    return out;
  }

  // --------------------------------------------------------------- the list
  const state = {
    status: '', outcome: '', filter: '', feature: '', ref: -1, q: '', sort: 'order', page: 0,
    size: 50,
  };
  let latest = 0;
  let searched = '';

  function selected() {
    const out = new Int32Array(n); let m = 0;
    const st = state.status === '' ? -1 : Number(state.status);
    const oc = state.outcome === '' ? -1 : Number(state.outcome);
    const ft = state.feature === '' ? null : Number(state.feature);
    const fl = state.filter;
    const flIndex = fl === '' || fl === 'any' || fl === 'none' ? null : Number(fl);
    for (let i = 0; i < n; i++) {
      if (st >= 0 && cols.status[i] !== st) continue;
      if (oc >= 0 && cols.outcome[i] !== oc) continue;
      if (ft !== null && cols.feature[i] !== ft) continue;
      if (fl === 'any' && cols.filter[i] < 0) continue;
      if (fl === 'none' && cols.filter[i] >= 0) continue;
      if (flIndex !== null && cols.filter[i] !== flIndex) continue;
      if (state.ref !== -1 && cols.ref[i] !== state.ref) continue;
      if (hits && !hits[i]) continue;
      out[m++] = i;
    }
    const order = out.slice(0, m);
    if (state.sort !== 'order') {
      const [what, direction] = state.sort.split('|');
      const key = what === 'mean' ? cols.mean : cols.score[what];
      const dir = direction === 'desc' ? -1 : 1;
      order.sort((p, q) => {
        const x = key[p]; const y = key[q];
        const xn = Number.isNaN(x); const yn = Number.isNaN(y);
        if (xn || yn) return xn === yn ? p - q : (xn ? 1 : -1); // unjudged last
        return x === y ? p - q : (x < y ? -dir : dir);
      });
    }
    return order;
  }

  async function update(resetPage = true) {
    const token = ++latest;
    viewer.busy = true;
    if (resetPage) state.page = 0;
    try {
      if (state.q !== searched) {
        if (state.q) {
          $('page-info').textContent = 'searching…';
          const found = await search(state.q, token);
          if (token !== latest || found === null) return;
          hits = found;
          query = new RegExp(escapeRe(state.q), 'i');
        } else {
          hits = null; query = null;
        }
        searched = state.q;
      }
      await renderList(token);
    } catch (err) {
      fail(err);
    } finally {
      if (token === latest) viewer.busy = false;
    }
  }

  async function renderList(token) {
    const order = selected();
    const pages = Math.max(1, Math.ceil(order.length / state.size));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    const shown = order.subarray(state.page * state.size, (state.page + 1) * state.size);
    const rows = await Promise.all(Array.from(shown, (i) => sampleRow(i)));
    if (token !== latest) return;
    const cards = Array.from(shown, (i, k) => card(i, rows[k]));
    $('list').replaceChildren(...(cards.length ? cards
      : [el('p', { cls: 'muted', text: 'No candidate matches.' })]));
    const from = order.length ? state.page * state.size + 1 : 0;
    $('page-info').textContent = `${num(from)}–${num(state.page * state.size + shown.length)} `
      + `of ${num(order.length)} candidates · page ${num(state.page + 1)} of ${num(pages)}`;
    $('page-info').dataset.total = String(order.length);
    for (const id of ['prev', 'prev2']) $(id).disabled = state.page === 0;
    for (const id of ['next', 'next2']) $(id).disabled = state.page >= pages - 1;
    viewer.renders++;
  }

  function statusName(i) { return M.statuses[cols.status[i]]; }

  function label(text) { return el('div', { cls: 'label', text }); }
  function textBlock(text, field) {
    return el('div', { cls: 'text', data: { field } }, marked(text));
  }

  function responses(first, improved) {
    if (!first && !improved) return [label('Response'), el('p', { cls: 'muted', text: 'none' })];
    if (!first || !improved || first === improved) {
      const note = first && improved ? ' (the refinement left it unchanged)'
        : (improved ? '' : ' (first; no improved response)');
      return [label('Response' + note), textBlock(improved || first, 'response')];
    }
    const views = {
      changes: () => diffNode(first, improved),
      first: () => textBlock(first, 'first_response'),
      improved: () => textBlock(improved, 'response'),
    };
    const holder = el('div', { cls: 'resp-body' });
    const buttons = {};
    const show = (mode) => {
      holder.replaceChildren(views[mode]());
      for (const [name, button] of Object.entries(buttons)) {
        button.setAttribute('aria-pressed', String(name === mode));
      }
    };
    for (const [name, title] of [['changes', 'changes'], ['first', 'first'],
      ['improved', 'improved']]) {
      buttons[name] = el('button', { type: 'button', text: title, onclick: () => show(name) });
    }
    const head = el('div', { cls: 'label' }, 'Response: first → improved ',
      el('span', { cls: 'tabs' }, Object.values(buttons)));
    show('changes');
    return [head, holder];
  }

  function gateBox(gate) {
    const match = String(gate.match_id ?? '');
    let target = match;
    if (idIndex.has(match)) target = el('a', { href: sampleHref(match), text: match });
    else if (match.startsWith('seed:') && refIndex.has(match.slice(5))) {
      target = el('a', { href: refHref(match.slice(5)), text: match });
    }
    const how = [gate.method, gate.score !== null && gate.score !== undefined
      ? num(gate.score, 2) : null].filter(Boolean).join(' ');
    const known = new Set(['name', 'method', 'score', 'field', 'match_id', 'match_text', 'source']);
    const rest = Object.entries(gate).filter(([k]) => !known.has(k));
    return el('div', { cls: 'gate', data: { field: 'filter' } },
      el('b', { text: 'Quality gate: ' + (gate.name ?? 'filter') }),
      how ? ` (${how})` : '', gate.field ? ` on the ${gate.field}` : '',
      gate.source ? `, ${gate.source}` : '', match ? ' — matched ' : '', target,
      gate.match_text ? el('div', { cls: 'small' }, marked(gate.match_text)) : null,
      rest.length ? kvTable(Object.fromEntries(rest)) : null);
  }

  function scoresTable(i, judge) {
    if (!M.criteria.length || Number.isNaN(cols.mean[i])) return null;
    const scale = (judge && judge.scale) || [1, 5];
    const rows = M.criteria.filter((c) => !Number.isNaN(cols.score[c][i])).map((c) => {
      const bar = el('span', { cls: 'bar' });
      const v = cols.score[c][i];
      bar.style.width = `${Math.max(0, (v - scale[0]) / (scale[1] - scale[0])) * 60}px`;
      return el('tr', null, el('td', { text: c }), el('td', { text: num(v, 2) }), el('td', null, bar));
    });
    return el('table', { cls: 'scores' }, rows);
  }

  function judgeLine(judge) {
    if (!judge) return null;
    const parts = [];
    if (judge.method) parts.push('method ' + judge.method);
    if (judge.criteria) parts.push('criteria ' + judge.criteria);
    if (judge.passed !== undefined) parts.push(judge.passed ? 'passed the bar' : 'under the bar');
    const pw = judge.pairwise;
    if (pw) {
      parts.push(`pairwise: ${pw.winner} wins` + (pw.votes ? ` (votes ${pw.votes.join(', ')})` : ''));
    }
    const known = new Set(['method', 'criteria', 'passed', 'pairwise', 'scale']);
    for (const [k, v] of Object.entries(judge)) if (!known.has(k) && v !== null) parts.push(`${k} ${plain(v)}`);
    return el('div', { cls: 'small muted' }, parts.join(' · '),
      pw && pw.rationale ? el('div', null, 'pairwise rationale: ', pw.rationale) : null);
  }

  function card(i, row, focus) {
    const [instruction, first, response, rationale, feedback, reason, gate, judge, extra] = row;
    const id = C.id[i];
    const st = statusName(i);
    const refId = M.refs.id[cols.ref[i]];
    const feature = cols.feature[i] >= 0 ? M.feature_names[cols.feature[i]] : null;
    const head = el('div', { cls: 'card-head' },
      el('a', { cls: 'sid', href: sampleHref(id), text: id }),
      el('span', { cls: 'badge ' + st, text: st }),
      st === 'accepted' ? null
        : el('span', { cls: 'outcome', text: M.outcome_names[cols.outcome[i]] }),
      el('span', { cls: 'judge', text: 'judge ' + num(cols.mean[i], 2) }),
      feature ? el('span', { cls: 'muted' }, 'feature: ', marked(feature)) : null,
      el('a', { cls: 'ref-link', href: refHref(refId), text: 'reference ' + refId }),
      el('span', { cls: 'muted small', text: `${C.revisions[i]} revision`
        + `${C.revisions[i] === 1 ? '' : 's'} · ${num(C.calls[i])} calls · `
        + `${num(C.tokens[i])} tokens` }));
    return el('article', { cls: 'card' + (focus ? ' focus' : ''), data: { id, status: st } },
      head,
      reason ? el('p', { cls: 'reason', data: { field: 'reason' } }, marked(reason)) : null,
      gate ? gateBox(gate) : null,
      label('Instruction'), textBlock(instruction, 'instruction'),
      responses(first, response),
      scoresTable(i, judge),
      rationale ? [label('Judge rationale'), textBlock(rationale, 'rationale')] : null,
      judgeLine(judge),
      feedback ? [label('Sample feedback'), textBlock(feedback, 'sample_feedback')] : null,
      extra ? [label('Other fields'), kvTable(extra)] : null,
      refBox(cols.ref[i]));
  }

  // ------------------------------------------------------- generic values
  function valueNode(value) {
    if (Array.isArray(value) && value.every((v) => v === null || typeof v !== 'object')) {
      return value.length ? el('ul', { cls: 'tight' }, value.map((v) => el('li', { text: num(v) })))
        : '–';
    }
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) return kvTable(value);
    return plain(value);
  }
  function kvTable(object) {
    return el('table', { cls: 'kv' }, Object.entries(object).map(([k, v]) => el('tr', null,
      el('td', { text: k }), el('td', null, valueNode(v)))));
  }

  // --------------------------------------------------------------- the run
  function renderRun() {
    const run = M.run; const settings = run.settings || {}; const stats = run.stats || {};
    const usage = stats.usage || {}; const counts = M.counts;
    const profile = run.profile ?? settings.profile;
    const facts = [
      ['run', `${run.run_id ?? '–'} (${run.status ?? '–'})`],
      ['model', run.model],
      ['mode', settings.feedback_mode],
      ['profile', profile === undefined ? undefined
        : (profile && typeof profile === 'object' ? (profile.name ?? JSON.stringify(profile)) : profile)],
      ['seeds', run.seeds],
      ['judge', [settings.judge_model || run.model, settings.judge_backend, settings.judge_criteria]
        .filter(Boolean).join(' · ')],
      ['judge bar', settings.judge_bar === undefined ? undefined : `mean ≥ ${settings.judge_bar}`
        + (settings.pairwise_filter ? ', and the improved response wins pairwise' : '')],
      ['sampling', ['temperature', 'max_tokens', 'seed'].filter((k) => settings[k] !== undefined)
        .map((k) => `${k.replace('_', ' ')} ${settings[k]}`).join(', ') || undefined],
      ['per reference', settings.per_reference],
      ['created', run.created], ['updated', run.updated],
    ];
    $('run-facts').replaceChildren(...facts.filter(([, v]) => v !== undefined && v !== null && v !== '')
      .flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { data: { fact: k }, text: String(v) })]));

    const accepted = stats.accepted ?? counts.accepted;
    const notAccepted = stats.rejected ?? counts.rejected + counts.failed;
    const countRow = (name, value, key, filter, sub) => el('tr', {
      cls: (filter ? 'clickable' : '') + (sub ? ' sub' : ''),
      onclick: filter ? () => { setFilters(filter); } : null,
    }, el('td', { text: name }), el('td', { data: { count: key, value: String(value) }, text: num(value) }));
    $('counts').replaceChildren(
      countRow('candidates', counts.candidates, 'candidates', {}),
      countRow('accepted', accepted, 'accepted', { status: '0' }),
      countRow('rejected or failed', notAccepted, 'not-accepted', null),
      countRow('rejected', counts.rejected, 'rejected', { status: '1' }, true),
      countRow('failed', counts.failed, 'failed', { status: '2' }, true),
      countRow('references done', stats.references_done ?? counts.references, 'references', null));
    if (accepted !== counts.accepted || notAccepted !== counts.rejected + counts.failed) {
      $('counts').append(el('tr', { data: { mismatch: '' } }, el('td', { cls: 'error', colspan: 2,
        text: `the ledgers hold ${counts.accepted} accepted and `
          + `${counts.rejected + counts.failed} others (the run may still be writing)` })));
    }
    const broken = M.refs.id.filter((_, r) => M.refs.error[r]);
    if (broken.length) {
      $('counts').append(el('tr', null, el('td', { colspan: 2 }, `${broken.length} `
        + `reference${broken.length > 1 ? 's' : ''} ended with an error: `, broken.slice(0, 20).flatMap((id, k) => [k ? ', ' : '',
        el('a', { href: refHref(id), text: id })]), broken.length > 20 ? ' …' : '')));
    }
    const total = counts.candidates || 1;
    $('outcomes').replaceChildren(...M.outcomes.map(([name, count]) => el('tr', {
      cls: 'clickable', data: { outcome: name },
      onclick: () => setFilters({ outcome: String(M.outcome_names.indexOf(name)) }),
    }, el('td', { text: name }), el('td', { text: num(count) }),
    el('td', { cls: 'muted', text: `${(100 * count / total).toFixed(1)}%` }))));

    const per = (key) => stats[key];
    const usageRows = [
      ['LLM calls', usage.calls], ['feedback calls', usage.feedback_calls],
      ['failed calls', usage.failed_calls], ['prompt tokens', usage.prompt_tokens],
      ['completion tokens', usage.completion_tokens],
      ['calls per accepted', per('llm_calls_per_accepted')],
      ['feedback calls per accepted', per('feedback_calls_per_accepted')],
      ['prompt tokens per accepted', per('prompt_tokens_per_accepted')],
      ['completion tokens per accepted', per('completion_tokens_per_accepted')],
    ];
    $('usage').replaceChildren(...usageRows.filter(([, v]) => v !== undefined).map(([k, v]) =>
      el('tr', null, el('td', { text: k }), el('td', { data: { usage: k }, text: num(v) }))));

    const report = M.report;
    if (report) {
      const pick = (object, ...path) => path.reduce((o, k) => (o == null ? undefined : o[k]), object);
      const dataset = [
        ['acceptance rate', report.acceptance_rate == null ? undefined
          : `${(100 * report.acceptance_rate).toFixed(1)}%`],
        ['judge mean, median', pick(report, 'scores_accepted', 'mean', 'median')],
        ['distinct-1 / distinct-2', pick(report, 'diversity', 'distinct_1') === undefined ? undefined
          : `${num(report.diversity.distinct_1, 3)} / ${num(report.diversity.distinct_2, 3)}`],
        ['unique instructions', pick(report, 'diversity', 'unique_instructions')],
        ['instruction tokens, median', pick(report, 'diversity', 'length_tokens', 'median')],
        ['response tokens, median', pick(report, 'response_length_tokens', 'median')],
        ['ROUGE-L with its seed, median', pick(report, 'rouge_l_with_own_seed', 'median')],
      ].filter(([, v]) => v !== undefined);
      $('dataset').replaceChildren(...dataset.map(([k, v]) =>
        el('tr', null, el('td', { text: k }), el('td', { data: { stat: k }, text: num(v) }))));
      $('dataset-box').hidden = !dataset.length;
    }

    const q = M.quality;
    if (q && q.checked !== undefined) {
      const nd = q.near_duplicate || {}; const dc = q.decontamination || {};
      $('quality').textContent = `Quality gates: ${num(q.checked)} checked, ${num(q.passed)} kept; `
        + `near-duplicates dropped ${num(nd.dropped)}, benchmark contamination dropped `
        + `${num(dc.dropped)}.`;
    }
    if (!document.querySelector('#plots figure')) $('plots-box').hidden = true;

    const shown = new Set(['run_id', 'status', 'model', 'seeds', 'created', 'updated', 'stats',
      'settings', 'fingerprint']);
    const rest = Object.fromEntries(Object.entries(run).filter(([k]) => !shown.has(k)));
    $('settings').replaceChildren(...Object.entries({ ...settings, ...rest }).map(([k, v]) =>
      el('tr', null, el('td', { text: k }), el('td', null, valueNode(v)))));
  }

  // ------------------------------------------------------------- controls
  function options(select, items) {
    select.replaceChildren(...items.map(([value, text]) => el('option', { value, text })));
  }
  function initControls() {
    const tally = (col, size) => {
      const counts = new Array(size + 1).fill(0);
      for (let i = 0; i < n; i++) counts[col[i] < 0 ? size : col[i]]++;
      return counts;
    };
    const st = tally(cols.status, M.statuses.length);
    options($('f-status'), [['', `all (${num(n)})`],
      ...M.statuses.map((s, k) => [String(k), `${s} (${num(st[k])})`]).filter((_, k) => st[k])]);
    const oc = tally(cols.outcome, M.outcome_names.length);
    options($('f-outcome'), [['', 'all'], ...M.outcome_names.map((s, k) => [String(k), s, oc[k]])
      .sort((x, y) => y[2] - x[2]).map(([v, s, c]) => [v, `${s} (${num(c)})`])]);
    const fl = tally(cols.filter, M.filter_names.length);
    options($('f-filter'), [['', 'all'], ['any', `dropped by a gate (${num(n - fl[M.filter_names.length])})`],
      ['none', 'not dropped by a gate'],
      ...M.filter_names.map((s, k) => [String(k), `${s} (${num(fl[k])})`])]);
    const ft = tally(cols.feature, M.feature_names.length);
    options($('f-feature'), [['', 'all'], ...M.feature_names.map((s, k) => [String(k), s, ft[k]])
      .sort((x, y) => y[2] - x[2]).map(([v, s, c]) => [v, `${s} (${num(c)})`])]);
    options($('sort'), [['order', 'by reference'], ['mean|desc', 'judge mean, high first'],
      ['mean|asc', 'judge mean, low first'],
      ...M.criteria.flatMap((c) => [[`${c}|desc`, `${c}, high first`], [`${c}|asc`, `${c}, low first`]])]);

    for (const [id, key] of [['f-status', 'status'], ['f-outcome', 'outcome'], ['f-filter', 'filter'],
      ['f-feature', 'feature'], ['sort', 'sort']]) {
      $(id).addEventListener('change', () => { state[key] = $(id).value; update(); });
    }
    $('page-size').addEventListener('change', () => { state.size = Number($('page-size').value); update(); });
    $('f-ref').addEventListener('change', () => { setRef($('f-ref').value.trim()); update(); });
    let timer = null;
    $('q').addEventListener('input', () => {
      viewer.busy = true;
      clearTimeout(timer);
      timer = setTimeout(() => { state.q = $('q').value.trim(); update(); }, 250);
    });
    $('controls').addEventListener('submit', (event) => event.preventDefault());
    const turn = (step) => () => {
      state.page += step; update(false);
      $('browse').scrollIntoView();
    };
    $('prev').addEventListener('click', turn(-1)); $('prev2').addEventListener('click', turn(-1));
    $('next').addEventListener('click', turn(1)); $('next2').addEventListener('click', turn(1));
    $('reset').addEventListener('click', () => setFilters({}));
  }
  function setRef(id) {
    $('f-ref').value = id;
    $('f-ref').classList.toggle('error', !!id && !refIndex.has(id));
    state.ref = id ? (refIndex.has(id) ? refIndex.get(id) : -2) : -1;
  }
  function setFilters(filters) {
    for (const key of ['status', 'outcome', 'filter', 'feature']) {
      state[key] = filters[key] ?? '';
      $(key === 'status' ? 'f-status' : 'f-' + key).value = state[key];
    }
    setRef(filters.ref ?? '');
    state.q = filters.q ?? ''; $('q').value = state.q;
    if (location.hash) location.hash = '';
    else update();
    $('browse').scrollIntoView();
  }

  // ---------------------------------------------------------------- views
  function showView(detail) {
    $('run').hidden = detail; $('browse').hidden = detail; $('detail').hidden = !detail;
  }
  const backLink = () => el('p', null, el('a', { href: '#', cls: 'back', text: '← back to the list' }));

  async function showSample(id) {
    const i = idIndex.get(id);
    const detail = $('detail');
    if (i === undefined) {
      detail.replaceChildren(backLink(), el('p', { cls: 'error', text: `no candidate ${id}` }));
      return;
    }
    const row = await sampleRow(i);
    detail.replaceChildren(backLink(), card(i, row, true));
  }

  // A reference: its texts, the feedback collected on it, and its done marker.
  function refBody(instruction, response, feedback, done) {
    const fb = feedback || {};
    const known = ['reference_id', 'instruction', 'response', 'instruction_guidance',
      'response_guidance', 'usage'];
    const restFb = Object.fromEntries(Object.entries(fb).filter(([k]) => !known.includes(k)));
    return [
      done && done.error ? el('p', { cls: 'reason', text: done.error }) : null,
      label('Reference instruction'),
      instruction ? textBlock(instruction, 'ref_instruction')
        : el('p', { cls: 'muted', text: '(in no sample: it produced none)' }),
      label('Reference response'),
      response ? textBlock(response, 'ref_response') : el('p', { cls: 'muted', text: '–' }),
      feedback ? [
        el('h3', { text: 'Feedback on the reference' }),
        fb.instruction ? [label('Instruction'), kvTable(fb.instruction)] : null,
        fb.response ? [label('Response'), kvTable(fb.response)] : null,
        fb.instruction_guidance
          ? [label('Guidance for new instructions'), valueNode(fb.instruction_guidance)] : null,
        fb.response_guidance
          ? [label('Guidance for responses'), valueNode(fb.response_guidance)] : null,
        Object.keys(restFb).length ? [label('More'), kvTable(restFb)] : null,
        fb.usage ? el('div', { cls: 'small muted', text: 'feedback usage: ' + plain(fb.usage) })
          : null,
      ] : el('p', { cls: 'muted', text: 'No feedback recorded for this reference.' }),
      done && done.usage
        ? el('div', { cls: 'small muted', text: 'reference usage: ' + plain(done.usage) }) : null,
    ];
  }

  // In a card: the reference, read when the reader opens it.
  function refBox(r) {
    const box = el('details', { cls: 'ref-box' },
      el('summary', { text: `Reference ${M.refs.id[r]} and its feedback` }));
    box.addEventListener('toggle', async () => {
      if (!box.open || box.dataset.filled) return;
      box.dataset.filled = '1';
      const [instruction, response, feedback, done] = await refRow(r);
      box.append(...refBody(instruction, response, feedback, done).flat(Infinity).filter(Boolean),
        el('p', null, el('a', { href: refHref(M.refs.id[r]), text: 'its page, with all its candidates' })));
    });
    return box;
  }

  async function showRef(id) {
    const r = refIndex.get(id);
    const detail = $('detail');
    if (r === undefined) {
      detail.replaceChildren(backLink(), el('p', { cls: 'error', text: `no reference ${id}` }));
      return;
    }
    const [instruction, response, feedback, done] = await refRow(r);
    const members = [];
    for (let i = 0; i < n; i++) if (cols.ref[i] === r) members.push(i);
    const rows = await Promise.all(members.map((i) => sampleRow(i)));
    detail.replaceChildren(
      backLink(),
      el('article', { cls: 'card focus', data: { ref: id } },
        el('div', { cls: 'card-head' }, el('span', { cls: 'sid', text: 'reference ' + id }),
          done ? el('span', { cls: 'muted', text: `${done.accepted} accepted, ${done.rejected} `
            + 'rejected or failed' }) : el('span', { cls: 'muted', text: 'not finished' }),
          el('button', { type: 'button', text: `list its ${members.length} candidates`,
            onclick: () => setFilters({ ref: id }) })),
        refBody(instruction, response, feedback, done),
        el('h3', { text: `Its candidates (${members.length})` }),
        el('table', { cls: 'list' }, members.map((i, k) => el('tr', { data: { id: C.id[i] } },
          el('td', null, el('a', { cls: 'sid', href: sampleHref(C.id[i]), text: C.id[i] })),
          el('td', null, el('span', { cls: 'badge ' + statusName(i), text: statusName(i) })),
          el('td', { text: M.outcome_names[cols.outcome[i]] }),
          el('td', { text: 'judge ' + num(cols.mean[i], 2) }),
          el('td', { text: (rows[k][0] || '').slice(0, 160) })))),
      ));
  }

  async function route() {
    const hash = decodeURIComponent(location.hash.slice(1));
    if (!hash.startsWith('sample=') && !hash.startsWith('ref=')) {
      showView(false);
      await update(false);
      return;
    }
    const token = ++latest;
    viewer.busy = true;
    try {
      showView(true);
      if (hash.startsWith('sample=')) await showSample(hash.slice(7));
      else await showRef(hash.slice(4));
      window.scrollTo(0, 0);
    } catch (err) {
      fail(err);
    } finally {
      if (token === latest) viewer.busy = false;
    }
  }

  function fail(err) {
    viewer.error = String(err && err.stack ? err.stack : err);
    $('loading').textContent = 'The viewer failed: ' + String(err);
    $('loading').className = 'error';
  }

  async function main() {
    M = await unpack('blob-meta');
    columns();
    $('loading').textContent = `${num(n)} candidates`;
    renderRun();
    initControls();
    window.addEventListener('hashchange', route);
    await route();
    await frame();
    viewer.firstPage = performance.now();
    await readAll();
  }
  main().catch(fail);
})();
