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
  /* Click a strip: show it at its natural 1600x256 size, without and with its overlay, and the colour key. */
  function close() {
    const open = document.getElementById('viewer');
    if (open) { open.remove(); }
  }
  function pair(label, sources) {
    const wrap = document.createElement('div');
    const title = document.createElement('div');
    title.className = 'label';
    title.textContent = label;
    const box = document.createElement('div');
    box.className = 'pair';
    sources.forEach(function (src) {
      const img = document.createElement('img');
      img.src = src;
      box.appendChild(img);
    });
    wrap.appendChild(title);
    wrap.appendChild(box);
    return wrap;
  }
  function open(strip) {
    close();
    const imgs = strip.querySelectorAll('img');
    const viewer = document.createElement('div');
    viewer.className = 'viewer';
    viewer.id = 'viewer';
    const body = document.createElement('div');
    body.className = 'viewer-body';
    const head = document.createElement('div');
    head.className = 'viewer-head';
    const caption = document.createElement('b');
    caption.textContent = strip.dataset.caption || strip.dataset.image || '';
    const button = document.createElement('button');
    button.className = 'viewer-close';
    button.textContent = 'Close (Esc)';
    head.appendChild(button);
    head.appendChild(caption);
    body.appendChild(head);
    body.appendChild(pair('image, 1600x256', [imgs[0].src]));
    if (imgs.length > 1) {
      body.appendChild(pair('with overlay', [imgs[0].src, imgs[1].src]));
      const legend = document.querySelector('.legend.' + (strip.dataset.legend || 'classes'));
      if (legend) { body.appendChild(legend.cloneNode(true)); }
    }
    viewer.appendChild(body);
    document.body.appendChild(viewer);
  }
  document.addEventListener('click', function (event) {
    const strip = event.target.closest('.strip');
    if (strip) { open(strip); return; }
    if (event.target.closest('.viewer-close') || event.target.id === 'viewer') { close(); }
  });
  document.addEventListener('keydown', function (event) { if (event.key === 'Escape') { close(); } });
})();
