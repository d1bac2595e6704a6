// Sightglass chart zoom: drag across the chart to show that span. The chart
// itself is SVG drawn by the server; this only turns a drag into a URL.
(function () {
  "use strict";
  var svg = document.getElementById("chart");
  if (!svg) { return; }
  var from = Number(svg.dataset.from), to = Number(svg.dataset.to);
  var left = Number(svg.dataset.left), width = Number(svg.dataset.width);
  var base = svg.dataset.base;
  var box = document.getElementById("zoom");
  var start = null;

  // x in the SVG's user units for a mouse event.
  function unitX(ev) {
    var r = svg.getBoundingClientRect();
    var vb = svg.viewBox.baseVal;
    return (ev.clientX - r.left) / r.width * vb.width;
  }
  function timeAt(x) {
    var f = Math.min(1, Math.max(0, (x - left) / width));
    return Math.round(from + f * (to - from));
  }
  svg.addEventListener("mousedown", function (ev) {
    start = unitX(ev);
    box.setAttribute("x", start); box.setAttribute("y", 0);
    box.setAttribute("width", 0); box.setAttribute("height", svg.viewBox.baseVal.height);
  });
  svg.addEventListener("mousemove", function (ev) {
    if (start === null) { return; }
    var x = unitX(ev);
    box.setAttribute("x", Math.min(start, x));
    box.setAttribute("width", Math.abs(x - start));
  });
  window.addEventListener("mouseup", function (ev) {
    if (start === null) { return; }
    var x = unitX(ev), a = timeAt(Math.min(start, x)), b = timeAt(Math.max(start, x));
    start = null;
    box.setAttribute("width", 0);
    if (b - a < 60000) { return; }
    var sep = base.indexOf("?") >= 0 ? "&" : "?";
    window.location.href = base + sep + "from=" + a + "&to=" + b;
  });
})();
