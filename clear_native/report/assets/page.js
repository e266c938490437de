(function () {
"use strict";
const R = window.CLEAR_REPORT;
const $ = (id) => document.getElementById(id);
if (!R) { $("grid").textContent = "data/index.js did not load: run clear-native report OUT again."; return; }
const rows = R.rows, N = rows.key.length, S = R.summary, names = R.classes.names, colours = R.classes.colours;
const DEFAULTS = {show: "all", cls: "", by: "either", dmin: "", dmax: "", sort: "index", p: "1", img: ""};

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}
const cname = (c) => c < 0 ? "none" : (names && c < names.length ? names[c] : String(c));
const cfull = (c) => cname(c) + (names && c >= 0 && c < names.length ? " (" + c + ")" : "");
const pm = (v) => v < 0 ? "n/a" : (v / 10).toFixed(1) + "%";
const pct = (v) => v === null || v === undefined ? "n/a" : (100 * v).toFixed(2) + "%";
const pic = (kind, i) => kind + "/" + String(Math.floor(i / 1000)).padStart(4, "0") + "/" + String(i).padStart(7, "0") + ".png";
const swatch = (c) => el("span", {class: "sw", style: "background:" + (c >= 0 && c < colours.length ? colours[c] : "#888")});
const chip = (c, share) => el("span", {class: "chip", title: "class " + c}, swatch(c), cname(c) + (share === undefined ? "" : " " + pm(share)));

function state() {
  const s = Object.assign({}, DEFAULTS);
  for (const part of location.hash.slice(1).split("&")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq) in s) s[part.slice(0, eq)] = decodeURIComponent(part.slice(eq + 1));
  }
  return s;
}
function hashOf(s) {
  return "#" + Object.keys(DEFAULTS).filter((k) => s[k] !== DEFAULTS[k]).map((k) => k + "=" + encodeURIComponent(s[k])).join("&");
}
function go(changes) { location.hash = hashOf(Object.assign(state(), changes)); }

function keep(i, s, c, lo, hi) {
  const v = rows.valid[i], l = rows.label[i], p = rows.pred[i];
  if (s.show === "wrong" && !(v && l >= 0 && l !== p)) return false;
  if (s.show === "correct" && !(v && l === p)) return false;
  if (s.show === "skipped" && v) return false;
  if (s.show === "nolabel" && l >= 0) return false;
  if (c !== null) {
    const top = rows.top[i].length ? rows.top[i][0] : -1;
    const hit = s.by === "label" ? l === c : s.by === "pred" ? v && p === c : s.by === "top" ? top === c : l === c || (v && p === c);
    if (!hit) return false;
  }
  if (lo !== null || hi !== null) {
    const d = rows.strong[i];
    if (d < 0 || (lo !== null && d < lo) || (hi !== null && d > hi)) return false;
  }
  return true;
}
function select(s) {
  const c = s.cls === "" ? null : Number(s.cls);
  const lo = s.dmin === "" ? null : 10 * Number(s.dmin), hi = s.dmax === "" ? null : 10 * Number(s.dmax);
  const out = [];
  for (let i = 0; i < N; i++) if (keep(i, s, c, lo, hi)) out.push(i);
  const by = {strong_asc: [rows.strong, 1], strong_desc: [rows.strong, -1], share_asc: [rows.share, 1], share_desc: [rows.share, -1]}[s.sort];
  if (by) {
    const [col, dir] = by;  // images without a value (-1) last
    out.sort((a, b) => (col[a] < 0) - (col[b] < 0) || dir * (col[a] - col[b]) || a - b);
  } else if (s.sort === "key") {
    out.sort((a, b) => rows.key[a] < rows.key[b] ? -1 : rows.key[a] > rows.key[b] ? 1 : a - b);
  }
  return out;
}

function item(i, s) {
  const v = rows.valid[i], l = rows.label[i], p = rows.pred[i];
  const kind = !v ? "skipped" : l < 0 ? "nolabel" : l === p ? "ok" : "bad";
  const a = el("a", {class: "item " + kind, href: hashOf(Object.assign({}, s, {img: String(i)})), "data-index": String(i)});
  const [th, tw] = R.thumb_shape;
  a.append(v ? el("img", {src: pic("thumbs", i), loading: "lazy", width: String(tw), height: String(th), alt: "CLEAR overlay of image " + i})
             : el("div", {class: "noimg", text: "skipped"}));
  const cap = el("div", {class: "cap"}, el("div", {class: "key", title: rows.key[i], text: "#" + i + " " + rows.key[i]}));
  if (!v) cap.append(el("div", {class: "err", text: (rows.error[String(i)] || "skipped").slice(0, 90)}));
  else {
    cap.append(el("div", {}, "label " + (l < 0 ? "none" : cname(l)) + " \u2192 ", el("span", {class: "pred", text: cname(p)})));
    cap.append(el("div", {text: "dominates " + pm(rows.strong[i]) + " of strong px"}));
    const chips = el("div", {class: "chips"});
    const t = rows.top[i];
    for (let k = 0; k < t.length; k += 2) chips.append(chip(t[k], t[k + 1]));
    cap.append(chips);
  }
  a.append(cap);
  return a;
}
function pager(node, s, pages) {
  node.replaceChildren();
  const p = Number(s.p) || 1;
  const link = (q, text) => q === p ? el("span", {class: "cur", text}) : el("a", {href: hashOf(Object.assign({}, s, {p: String(q), img: ""})), text});
  node.append("page ");
  if (p > 1) node.append(link(1, "\u00ab first"), link(p - 1, "\u2039 prev"));
  for (let q = Math.max(1, p - 3); q <= Math.min(pages, p + 3); q++) node.append(link(q, String(q)));
  if (p < pages) node.append(link(p + 1, "next \u203a"), link(pages, "last \u00bb"));
  node.append(" of " + pages);
}
let listKey = null, list = [];
function renderList(s) {
  const key = hashOf(Object.assign({}, s, {img: ""}));
  if (key === listKey) return;
  listKey = key;
  list = select(s);
  const size = R.page_size, pages = Math.max(1, Math.ceil(list.length / size));
  const p = Math.min(Math.max(1, Number(s.p) || 1), pages);
  $("count").textContent = list.length + " of " + N + " images";
  pager($("pager-top"), Object.assign({}, s, {p: String(p)}), pages);
  pager($("pager-bottom"), Object.assign({}, s, {p: String(p)}), pages);
  const frag = document.createDocumentFragment();
  for (const i of list.slice((p - 1) * size, p * size)) frag.append(item(i, s));
  $("grid").replaceChildren(frag);
}

function facts(i) {
  const v = rows.valid[i], l = rows.label[i], p = rows.pred[i];
  const tbl = el("table");
  const add = (k, val) => tbl.append(el("tr", {}, el("th", {text: k}), el("td", {}, val)));
  add("label", l < 0 ? "none" : cfull(l));
  if (!v) add("skipped", el("span", {class: "err", text: rows.error[String(i)] || ""}));
  else {
    add("prediction", el("span", {class: l >= 0 && l !== p ? "err" : "", text: cfull(p) + (l >= 0 ? (l === p ? ": correct" : ": wrong") : "")}));
    add("prediction's share of the strong pixels", pm(rows.strong[i]));
    add("prediction's share of the coloured pixels", pm(rows.share[i]));
  }
  return tbl;
}
function renderDetail(s) {
  const d = $("detail");
  if (s.img === "" || !(Number(s.img) >= 0 && Number(s.img) < N)) { d.hidden = true; document.title = "CLEAR results"; return; }
  const i = Number(s.img), at = list.indexOf(i);
  const back = Object.assign({}, s, {img: ""});
  if (at >= 0) back.p = String(Math.floor(at / R.page_size) + 1);
  const nav = el("div", {class: "dnav"}, el("a", {href: hashOf(back), id: "close", text: "\u2190 back to the list"}));
  if (at > 0) nav.append(el("a", {href: hashOf(Object.assign({}, s, {img: String(list[at - 1])})), id: "prev", text: "\u2039 previous"}));
  if (at >= 0 && at < list.length - 1) nav.append(el("a", {href: hashOf(Object.assign({}, s, {img: String(list[at + 1])})), id: "next", text: "next \u203a"}));
  const head = el("h2", {text: "image #" + i + ": " + rows.key[i]});
  const panels = el("div", {class: "panels"});
  if (rows.valid[i]) {
    const k = R.panels.length, [ph, pw] = R.panel_shape, scale = Math.max(1, Math.floor(160 / Math.max(ph, pw)));
    R.panels.forEach((name, j) => {
      const pos = k > 1 ? (100 * j / (k - 1)) : 0;
      panels.append(el("figure", {}, el("div", {class: "panel", role: "img", "aria-label": name,
        style: "width:" + pw * scale + "px;height:" + ph * scale + "px;background-image:url('" + pic("detail", i) + "');background-size:" + k * 100 + "% 100%;background-position:" + pos + "% 0"}),
        el("figcaption", {text: name})));
    });
  }
  const legend = el("div", {class: "legend"});
  const t = rows.top[i];
  for (let k = 0; k < t.length; k += 2) legend.append(chip(t[k], t[k + 1]));
  const all = el("div", {class: "legend"});
  if (colours.length <= 20) for (let c = 0; c < colours.length; c++) all.append(chip(c));
  const few = colours.length <= 20;
  d.replaceChildren(...[nav, head, facts(i), panels, el("div", {class: "note", text: "dominant classes of this image (share of all pixels):"}), legend,
    few ? el("div", {class: "note", text: "class colours:"}) : null, few ? all : null,
    el("div", {class: "note", text: "positive focus: the predicted class's response; negative focus: the best other class's; binary: red where the prediction wins, blue where another class does"})].filter((x) => x));
  d.hidden = false;
  document.title = "image #" + i + " \u2013 CLEAR results";
}
function render() {
  const s = state();
  for (const id of ["show", "cls", "by", "dmin", "dmax", "sort"]) if ($(id).value !== s[id]) $(id).value = s[id];
  renderList(s);
  renderDetail(s);
}

function fact(value, label) { return el("div", {class: "fact"}, el("b", {text: value}), el("span", {text: label})); }
function throughput(t, c) {
  const f = (v) => (v || 0).toFixed(1) + " s";
  if (t.images_this_invocation) return fact(t.images_per_s.toFixed(1) + " img/s", "throughput of the last invocation (" +
    t.images_this_invocation + " images in " + f(t.wall_s) + "; reading data " + f(t.data_s) + ", explaining " + f(t.explain_s) + ", writing " + f(t.write_s) + ")");
  const a = t.all_chunks || {};  // the last invocation resumed a finished run: the chunks' own records
  return fact(a.explain_s ? (c.images / a.explain_s).toFixed(1) + " img/s" : "n/a", "explaining, over every chunk's record (" +
    c.images + " images: reading data " + f(a.data_s) + ", explaining " + f(a.explain_s) + ", writing " + f(a.write_s) + ")");
}
function renderSummary() {
  const r = S.run, c = S.counts || {}, res = S.results || {}, t = S.timings || {};
  $("run").textContent = "model " + r.model + (r.model_class ? " (" + r.model_class + ")" : "") + " \u00b7 data " + r.data +
    " \u00b7 method " + r.method + (r.signal ? ", signal " + r.signal : "") + " \u00b7 " + r.num_classes + " classes \u00b7 maps " +
    r.map_shape.join(" x ") + (r.preprocess ? " \u00b7 preprocess " + r.preprocess : "");
  const box = el("div", {class: "facts"},
    fact(String(c.images), "images (" + c.explained + " explained, " + c.errors + " skipped)"),
    fact(pct(res.accuracy), "accuracy: prediction = label, over the " + (res.labelled || 0) + " explained images with a label"),
    fact(pct(res.prediction_share_strong_correct), "class sensitivity: prediction's share of the strong pixels, correct images (chance " + pct(res.chance) + ")"),
    fact(pct(res.agrees), "images whose most dominant class is the prediction"),
    throughput(t, c));
  const parts = [box];
  if (res.sample_note) parts.push(el("p", {class: "note", text: "Note: " + res.sample_note + "."}));
  parts.push(el("p", {class: "note", text: "CLEAR maps: the hue is the dominant class, the brightness its response. Under the maps: " + S.inputs + "."}));
  parts.push(errorsBox(), classTable());
  if (S.confusions.length) parts.push(el("details", {}, el("summary", {text: "most frequent errors (label \u2192 prediction)"}),
    el("div", {class: "legend"}, ...S.confusions.map(([a, b, n]) => el("a", {href: hashOf(Object.assign({}, DEFAULTS, {show: "wrong", cls: String(a), by: "label"})), class: "chip", text: cname(a) + " \u2192 " + cname(b) + ": " + n})))));
  $("summary").replaceChildren(...parts);
}
function errorsBox() {
  const e = S.errors;
  const d = el("details", {}, el("summary", {text: e.total + " images skipped" + (e.kinds.length ? ": " + e.kinds.slice(0, 3).map(([k, n]) => n + " x " + k).join(", ") : "")}));
  const ul = el("ul");
  for (const x of e.first) ul.append(el("li", {}, el("a", {href: hashOf(Object.assign({}, DEFAULTS, {show: "skipped", img: String(x.index)})), text: x.key}), ": " + x.reason));
  if (e.total > e.first.length) ul.append(el("li", {text: "... and " + (e.total - e.first.length) + " more in errors.json"}));
  d.append(ul);
  return d;
}
function classTable() {
  const pc = S.per_class, tbl = el("table");
  tbl.append(el("tr", {}, ...["class", "images (label)", "accuracy", "predicted", "prediction dominates (strong px)"].map((h) => el("th", {text: h}))));
  pc.class.forEach((c, k) => tbl.append(el("tr", {},
    el("td", {}, el("a", {href: hashOf(Object.assign({}, DEFAULTS, {cls: String(c)}))}, swatch(c), " " + cname(c))),
    el("td", {text: String(pc.images[k])}), el("td", {text: pc.images[k] ? pct(pc.correct[k] / pc.images[k]) : "n/a"}),
    el("td", {text: String(pc.predicted[k])}), el("td", {text: pm(pc.strong[k])}))));
  return el("details", {}, el("summary", {text: "per class (" + pc.class.length + ") and the class colours"}), tbl);
}
function setup() {
  const sel = $("cls");
  const seen = new Set(S.per_class.class);
  for (let c = 0; c < colours.length; c++) if (seen.has(c)) sel.append(el("option", {value: String(c), text: c + ": " + cname(c)}));
  for (const id of ["show", "cls", "by", "sort"]) $(id).addEventListener("change", () => go({[id]: $(id).value, p: "1", img: ""}));
  for (const id of ["dmin", "dmax"]) $(id).addEventListener("change", () => go({[id]: $(id).value, p: "1", img: ""}));
  document.addEventListener("keydown", (e) => {
    if ($("detail").hidden) return;
    const a = e.key === "Escape" ? $("close") : e.key === "ArrowLeft" ? $("prev") : e.key === "ArrowRight" ? $("next") : null;
    if (a) location.hash = a.getAttribute("href");
  });
  document.documentElement.style.setProperty("--aspect", R.thumb_shape[1] + " / " + R.thumb_shape[0]);
  window.addEventListener("hashchange", render);
  renderSummary();
  render();
}
setup();
})();
