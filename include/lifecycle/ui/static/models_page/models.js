// The Models page's behaviour (templates/models_page/): Airflow links out of the frame, the charts, rollback.
(function () {
  'use strict';
  var inFrame = window.top !== window;
  function topWindow() { try { return inFrame ? window.top : window; } catch (e) { return window; } }

  // The Airflow UI frames this page in a sandbox without top navigation and without dialogs of its own:
  // links to Airflow pages open in the top window, and the confirmation is asked by the top window.
  document.addEventListener('click', function (event) {
    var link = event.target.closest('a[data-top]');
    if (!link || !inFrame) return;
    event.preventDefault();
    try {
      var doc = window.top.document, a = doc.createElement('a');
      a.href = link.href; doc.body.appendChild(a); a.click(); a.remove();
    } catch (e) { window.location.href = link.href; }
  });

  // ------------------------------------------------------------------------------------------ charts
  // Each <canvas data-chart="ID"> gets its data from <script type="application/json" id="ID">, built by
  // lifecycle.ui.models_page (Chart.data there): datasets in columns x, y and maybe text, r, champion, where a
  // y of null breaks a line and `text` is what hovering the point shows (or, with `digits`, "<label>
  // <x label>: <y>"). A dataset's `role` says how it is drawn; a point's `r` overrides its radius.
  var WARN = '#b45309', BAD = '#b91c1c';
  var ROLES = {
    metric: { line: true, width: 2, radius: 3.5, order: 0 },
    realised: { line: true, width: 1.6, radius: 4, order: 0 },
    estimated: { line: true, width: 1.4, dash: [5, 4], radius: 3.5, hollow: true, order: 1 },
    realised_ci: { line: true, width: 1.2, radius: 3, style: 'line', order: 2, quiet: true },
    estimated_ci: { line: true, width: 3, alpha: 0.35, radius: 0, order: 2, quiet: true },
    reference: { line: true, width: 1, dash: [1, 3], radius: 0, order: 3 },
    trigger: { line: true, width: 1.2, dash: [4, 3], radius: 0, color: WARN, order: 3 },
    floor: { line: true, width: 1.5, dash: [6, 4], radius: 0, color: BAD, order: 3 },
    threshold: { line: true, width: 1.5, dash: [6, 4], radius: 0, color: BAD, order: 3 },
    feature: { line: true, width: 1.6, radius: 0, order: 1 },
    bar: { order: 0 }
  };
  var GOLD = '#eab308', GOLD_EDGE = '#854d0e';

  function alpha(hex, a) {
    var n = parseInt(hex.slice(1), 16);
    return 'rgba(' + (n >> 16 & 255) + ',' + (n >> 8 & 255) + ',' + (n & 255) + ',' + a + ')';
  }

  function points(spec, labels) {
    var drifted = {};
    (spec.drifted || []).forEach(function (i) { drifted[i] = true; });
    return spec.x.map(function (x, i) {
      var y = spec.y[i], point = { x: x, y: y };
      if (spec.text) point.text = spec.text[i];
      else if (spec.digits !== undefined && y !== null) {
        point.text = spec.label + ' ' + labels[x] + ': ' + y.toFixed(spec.digits) + (drifted[i] ? ' (drifted)' : '');
      }
      if (spec.r && spec.r[i] !== null) point.r = spec.r[i];
      if (spec.champion && spec.champion[i]) point.champion = true;
      return point;
    });
  }

  function dataset(spec, labels) {
    var role = ROLES[spec.role] || ROLES.feature;
    var color = spec.color || role.color || '#64748b';
    var stroke = role.alpha ? alpha(color, role.alpha) : color;
    var radius = function (ctx) {
      var raw = ctx.raw;
      if (!raw || raw.y === null) return 0;
      if (raw.r !== undefined) return raw.r;
      return raw.champion ? 6 : role.radius;
    };
    var fill = function (ctx) { return ctx.raw && ctx.raw.champion ? GOLD : (role.hollow ? '#fff' : color); };
    var edge = function (ctx) { return ctx.raw && ctx.raw.champion ? GOLD_EDGE : stroke; };
    var out = {
      label: spec.label, role: spec.role, version: spec.version, data: points(spec, labels), order: role.order,
      borderColor: stroke, backgroundColor: color, borderWidth: role.width || 1, borderDash: role.dash || [],
      showLine: !!role.line, spanGaps: false, fill: false, tension: 0,
      pointRadius: radius, pointHoverRadius: function (ctx) { return role.quiet ? radius(ctx) : radius(ctx) + 2; },
      pointHitRadius: role.quiet ? 0 : 4, pointStyle: role.style || 'circle',
      pointBackgroundColor: fill, pointBorderColor: edge, pointBorderWidth: 1.5
    };
    if (spec.role === 'bar') {
      out.backgroundColor = color; out.borderWidth = 0; out.barPercentage = 0.8; out.categoryPercentage = 1;
    }
    return out;
  }

  function draw(canvas) {
    var source = document.getElementById(canvas.dataset.chart);
    var spec = JSON.parse(source.textContent);
    var labels = spec.x_labels;
    var readout = canvas.dataset.readout && document.getElementById(canvas.dataset.readout);
    var bar = spec.kind === 'bar';
    var x = { type: 'linear', min: -0.5, max: labels.length - 0.5, grid: { display: false } };
    x.ticks = {
      precision: 0, maxTicksLimit: 9, includeBounds: false, maxRotation: 0,
      callback: function (value) { return Number.isInteger(value) && labels[value] !== undefined ? labels[value] : ''; }
    };
    var y = { title: { display: true, text: spec.y_label }, grid: { color: '#f1f5f9' } };
    if (spec.y_min !== null) y.min = spec.y_min; else y.grace = '8%';
    return new Chart(canvas, {
      type: bar ? 'bar' : 'line',
      data: { datasets: spec.datasets.map(function (d) { return dataset(d, labels); }) },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, normalized: true, parsing: true,
        interaction: { mode: 'nearest', intersect: true },
        scales: { x: x, y: y },
        plugins: {
          legend: { display: false },
          tooltip: {
            filter: function (item) { return !!(item.raw && item.raw.text); },
            displayColors: false,
            callbacks: { title: function () { return ''; }, label: function (item) { return item.raw.text; } },
            // The library's tooltip, repeated under the chart: readable without a mouse, and by tests.
            external: readout ? function (context) {
              var tip = context.tooltip;
              if (tip.opacity && tip.dataPoints && tip.dataPoints.length) {
                readout.textContent = tip.dataPoints.map(function (p) { return p.raw.text; }).join(' | ');
              }
            } : undefined
          }
        }
      }
    });
  }

  document.querySelectorAll('canvas[data-chart]').forEach(function (canvas) {
    try {
      if (typeof Chart === 'undefined') throw new Error('Chart.js did not load');
      draw(canvas);
    } catch (err) {
      var note = document.createElement('p');
      note.className = 'chart-error';
      note.textContent = 'This chart could not be drawn: ' + err.message;
      canvas.parentNode.after(note);
      if (window.console) console.error(err);
    }
  });

  // ---------------------------------------------------------------------------------------- rollback
  document.querySelectorAll('form.rollback').forEach(function (form) {
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      var status = document.getElementById('rollback-status');
      var version = form.elements.version.value, current = form.dataset.current;
      var question = 'Move the champion alias of ' + form.dataset.model + ' from version ' + current +
        ' to version ' + version + '? Batch predictions will use version ' + version + ' from their next run.';
      if (!topWindow().confirm(question)) { status.textContent = 'Rollback cancelled.'; return; }
      status.textContent = 'Rolling back...';
      fetch(form.action, {
        method: 'POST', credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', 'X-Lifecycle-Action': 'rollback' },
        body: JSON.stringify({ version: version, expected_current: current, reason: form.elements.reason.value })
      }).then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) throw new Error(body.detail || ('HTTP ' + response.status));
          status.textContent = 'Champion is now version ' + body.champion + '.';
          window.location.reload();
        });
      }).catch(function (err) { status.textContent = 'Rollback failed: ' + err.message; });
    });
  });
})();
