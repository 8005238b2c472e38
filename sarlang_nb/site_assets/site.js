// sarlang-nb offline docs: client-side search over window.SARLANG_SEARCH (assets/search-index.js,
// the same records as search.json) and the table of contents' current section. No network, works from file://.
(function () {
  "use strict";
  var index = window.SARLANG_SEARCH || [];
  var input = document.getElementById("search-input");
  var list = document.getElementById("search-results");
  function esc(s) { return s.replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; }); }
  function terms(q) { return q.toLowerCase().split(/\s+/).filter(function (t) { return t.length > 0; }); }
  function score(rec, ts) {
    var head = (rec.page + " " + rec.section).toLowerCase(), body = rec.text.toLowerCase(), s = 0;
    for (var i = 0; i < ts.length; i++) {
      var inHead = head.indexOf(ts[i]) >= 0, inBody = body.indexOf(ts[i]) >= 0;
      if (!inHead && !inBody) return 0;
      s += (inHead ? 10 : 0) + (inBody ? 1 + Math.min(body.split(ts[i]).length - 1, 10) : 0);
    }
    var phrase = ts.join(" ");
    if (ts.length > 1 && (head + " " + body).indexOf(phrase) >= 0) s += 25;
    return s;
  }
  function snippet(text, ts) {
    var low = text.toLowerCase(), at = low.indexOf(ts.join(" "));
    if (at < 0) at = low.indexOf(ts[0]);
    var start = Math.max(0, at - 60), snip = (start > 0 ? "… " : "") + text.slice(start, start + 170) + (text.length > start + 170 ? " …" : "");
    var out = esc(snip);
    ts.forEach(function (t) { out = out.replace(new RegExp("(" + t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + ")", "gi"), "<mark>$1</mark>"); });
    return out;
  }
  function search(q) {
    var ts = terms(q);
    if (!ts.length) return [];
    var hits = [];
    index.forEach(function (rec) { var s = score(rec, ts); if (s > 0) hits.push([s, rec]); });
    hits.sort(function (a, b) { return b[0] - a[0]; });
    return hits.slice(0, 15).map(function (h) { return h[1]; });
  }
  window.sarlangSearch = search;
  function show(q) {
    var hits = search(q), ts = terms(q);
    if (!ts.length) { list.hidden = true; list.innerHTML = ""; return; }
    list.hidden = false;
    if (!hits.length) { list.innerHTML = '<li class="none">No match for “' + esc(q) + '”</li>'; return; }
    list.innerHTML = hits.map(function (r, i) {
      var sec = r.section && r.section !== r.page ? ' <span class="r-sec">› ' + esc(r.section) + "</span>" : "";
      return '<li><a href="' + esc(r.url) + '"' + (i === 0 ? ' class="sel"' : "") + '><span class="r-page">' + esc(r.page) + "</span>" + sec +
             '<span class="r-snip">' + snippet(r.text || r.section, ts) + "</span></a></li>";
    }).join("");
  }
  if (input && list) {
    input.addEventListener("input", function () { show(input.value); });
    input.addEventListener("keydown", function (e) {
      var links = list.querySelectorAll("a"), cur = list.querySelector("a.sel"), i = Array.prototype.indexOf.call(links, cur);
      if (e.key === "Enter" && cur) { window.location.href = cur.getAttribute("href"); e.preventDefault(); }
      else if ((e.key === "ArrowDown" || e.key === "ArrowUp") && links.length) {
        if (cur) cur.classList.remove("sel");
        i = e.key === "ArrowDown" ? Math.min(links.length - 1, i + 1) : Math.max(0, i - 1);
        links[i].classList.add("sel"); links[i].scrollIntoView({block: "nearest"}); e.preventDefault();
      } else if (e.key === "Escape") { input.value = ""; show(""); }
    });
    var q = new URLSearchParams(window.location.search).get("q");
    if (q) { input.value = q; show(q); }
  }
  // table of contents: mark the section in view
  var tocLinks = Array.prototype.slice.call(document.querySelectorAll(".toc a"));
  if (tocLinks.length && "IntersectionObserver" in window) {
    var byId = {};
    tocLinks.forEach(function (a) { byId[decodeURIComponent(a.getAttribute("href").slice(1))] = a; });
    var obs = new IntersectionObserver(function (entries) {
      entries.forEach(function (en) {
        if (en.isIntersecting && byId[en.target.id]) {
          tocLinks.forEach(function (a) { a.classList.remove("active"); });
          byId[en.target.id].classList.add("active");
        }
      });
    }, {rootMargin: "0px 0px -70% 0px"});
    Object.keys(byId).forEach(function (id) { var el = document.getElementById(id); if (el) obs.observe(el); });
  }
})();
