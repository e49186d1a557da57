/* Browser side of the dashboard: the upload gate (size check before anything is sent) and the strip viewer. */
window.dash_clientside = Object.assign({}, window.dash_clientside, {
  steelseg: {
    /* Refuse a file over the server's cap in the page (the server would only answer 413); pass others on. */
    gateUpload: function (contents, filename, limit) {
      const skip = window.dash_clientside.no_update;
      if (!contents) { return [skip, skip, skip]; }
      const data = contents.length - contents.indexOf(',') - 1;
      const pad = contents.endsWith('==') ? 2 : (contents.endsWith('=') ? 1 : 0);
      const size = Math.floor(data * 3 / 4) - pad;
      const mib = function (n) { return (n / 1048576).toFixed(1); };
      if (size > limit) {
        return ['Upload refused: ' + filename + ': larger than the ' + mib(limit) + ' MiB upload limit (' + mib(size) +
                ' MiB); split the file or restart the dashboard with a larger --max-upload-mb', 'alert error', skip];
      }
      return ['Checking ' + filename + ' (' + mib(size) + ' MiB)…', 'alert busy',
              {contents: contents, filename: filename, at: Date.now()}];
    }
  }
});

(function () {
  /* Click a strip: a Plotly image view of it, as wide as the window allows (fit to width, never wider than the
     page), with the overlay switchable; drag to zoom, wheel to zoom, shift-drag or the pan tool to pan,
     double-click (or "Fit to width") to go back to the whole strip. Esc or the button closes it. */
  const W = 1600, H = 256;
  function close() {
    const open = document.getElementById('viewer');
    if (open) {
      const plot = open.querySelector('.viewer-plot');
      if (plot && window.Plotly) { window.Plotly.purge(plot); }
      open.remove();
    }
  }
  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) { el.className = className; }
    if (text) { el.textContent = text; }
    return el;
  }
  function fit(plot) {
    const width = plot.clientWidth;
    window.Plotly.relayout(plot, {width: width, height: Math.round(width * H / W) + 40,
                                  'xaxis.range': [0, W], 'yaxis.range': [H, 0]});
  }
  function open(strip) {
    close();
    const imgs = strip.querySelectorAll('img');
    const viewer = element('div', 'viewer');
    viewer.id = 'viewer';
    const body = element('div', 'viewer-body');
    const head = element('div', 'viewer-head');
    head.appendChild(element('button', 'viewer-close', 'Close (Esc)'));
    const reset = element('button', 'viewer-fit', 'Fit to width');
    head.appendChild(reset);
    let toggle = null;
    if (imgs.length > 1) {
      const label = element('label', 'viewer-toggle');
      toggle = element('input');
      toggle.type = 'checkbox';
      toggle.checked = true;
      toggle.id = 'viewer-overlay';
      label.appendChild(toggle);
      label.appendChild(document.createTextNode(' overlay'));
      head.appendChild(label);
    }
    head.appendChild(element('b', null, strip.dataset.caption || strip.dataset.image || ''));
    body.appendChild(head);
    body.appendChild(element('div', 'viewer-hint', 'Drag to zoom a box, wheel to zoom, pan with the hand tool; ' +
                             'double-click or "Fit to width" shows the whole 1600x256 strip. Axes in image pixels.'));
    const plot = element('div', 'viewer-plot');
    plot.id = 'viewer-plot';
    body.appendChild(plot);
    if (imgs.length > 1) {
      const legend = document.querySelector('.legend.' + (strip.dataset.legend || 'classes'));
      if (legend) { body.appendChild(legend.cloneNode(true)); }
    }
    viewer.appendChild(body);
    document.body.appendChild(viewer);
    const picture = function (src, k) {  /* the steel image under the plot, its overlay above it */
      return {source: src, xref: 'x', yref: 'y', x: 0, y: 0, sizex: W, sizey: H, sizing: 'stretch',
              layer: k ? 'above' : 'below'};
    };
    const width = plot.clientWidth;
    const axis = {showgrid: false, zeroline: false, ticks: 'outside', tickfont: {size: 10}};
    window.Plotly.newPlot(plot, [], {
      images: Array.from(imgs, function (img, k) { return picture(img.src, k); }),
      xaxis: Object.assign({range: [0, W], constrain: 'domain'}, axis),
      yaxis: Object.assign({range: [H, 0], scaleanchor: 'x', constrain: 'domain'}, axis),
      width: width, height: Math.round(width * H / W) + 40,
      margin: {l: 34, r: 4, t: 4, b: 30}, dragmode: 'zoom', plot_bgcolor: '#000'
    }, {scrollZoom: true, displaylogo: false, doubleClick: 'reset',
        modeBarButtonsToRemove: ['select2d', 'lasso2d', 'autoScale2d']});
    reset.addEventListener('click', function () { fit(plot); });
    if (toggle) {
      toggle.addEventListener('change', function () {
        window.Plotly.relayout(plot, {'images[1].visible': toggle.checked});
      });
    }
  }
  window.addEventListener('resize', function () {
    const plot = document.getElementById('viewer-plot');
    if (plot) { fit(plot); }
  });
  document.addEventListener('click', function (event) {
    const strip = event.target.closest('.strip');
    if (strip) { open(strip); return; }
    if (event.target.closest('.viewer-close') || event.target.id === 'viewer') { close(); }
  });
  document.addEventListener('keydown', function (event) { if (event.key === 'Escape') { close(); } });
})();
