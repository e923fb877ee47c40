"""The page `coap proxy` serves at `GET /`: a device's resources (its /.well-known/core)
as a table, observable values updated live. No library: the HTML is built here with
every value escaped (a device's links and payloads are untrusted), the script and
style are static files of the proxy (/.iotctl/page.js, /.iotctl/page.css), and the
page's Content-Security-Policy allows nothing else.

The script opens ONE EventSource for all the observable resources of the page
(`/.iotctl/observe?device=URI&path=/a&path=/b`: a browser keeps at most six HTTP/1.1
connections per host, so one per resource would stall the seventh), whose `value`
events carry {"path", "payload", "encoding", "content_type"} and whose `end` events
{"path", "reason"}. A resource that is not observable has a button that GETs it once
through `/hc/coap://...`.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote, urlencode

from iotctl.protocols.coap.proxy.mapping import hosting

CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

SCRIPT = r"""'use strict';
(function () {
  const rows = new Map();
  for (const row of document.querySelectorAll('tr[data-path]')) {
    rows.set(row.dataset.path, row);
    const button = row.querySelector('button.get');
    if (button) {
      button.addEventListener('click', async function () {
        const cell = row.querySelector('.value');
        cell.dataset.state = 'loading';
        try {
          const response = await fetch(row.dataset.uri, {cache: 'no-store'});
          const text = await response.text();
          cell.textContent = response.ok ? text : response.status + ' ' + response.statusText + ': ' + text;
          cell.dataset.state = response.ok ? 'fetched' : 'error';
        } catch (err) {
          cell.textContent = String(err);
          cell.dataset.state = 'error';
        }
      });
    }
  }
  const table = document.getElementById('resources');
  const live = table ? table.dataset.observe : '';
  if (!live) { return; }
  const status = document.getElementById('status');
  const source = new EventSource(live);
  let open = document.querySelectorAll('tr[data-observe]').length;
  source.addEventListener('open', function () { status.textContent = 'live'; });
  source.addEventListener('value', function (event) {
    const item = JSON.parse(event.data);
    const row = rows.get(item.path);
    if (!row) { return; }
    const cell = row.querySelector('.value');
    cell.textContent = item.encoding === 'base64' ? '(binary, base64) ' + item.payload : item.payload;
    cell.dataset.state = 'live';
    cell.dataset.updates = String(Number(cell.dataset.updates || '0') + 1);
    row.querySelector('.updated').textContent = new Date().toLocaleTimeString();
  });
  source.addEventListener('end', function (event) {
    const item = JSON.parse(event.data);
    const row = rows.get(item.path);
    if (row) {
      row.querySelector('.value').dataset.state = 'ended';
      row.querySelector('.updated').textContent = item.reason;
    }
    open -= 1;
    if (open <= 0) { source.close(); status.textContent = 'ended'; }
  });
  source.addEventListener('error', function () {
    status.textContent = source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting';
  });
})();
"""

STYLE = """body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .6em; }
form { margin-bottom: 1em; }
input[name=device] { width: 28em; font: inherit; padding: .2em .4em; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: .3em .7em; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f4f4f4; }
td.value { font-family: ui-monospace, monospace; white-space: pre-wrap; max-width: 30em; word-break: break-all; }
td.value[data-state=live] { background: #eef8ee; }
td.value[data-state=ended], td.value[data-state=error] { color: #a00; }
.error { color: #a00; }
.muted { color: #777; font-size: .9em; }
"""


def _attr(value) -> str:
    if value is True:
        return "yes"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def render(device: str | None, links: list[dict] | None, error: str | None, base: str | None,
           hc_prefix: str = "/hc/") -> str:
    """The page: the form, then (with a device) its resources or the error.

    links: the device's parsed link-format (hrefs resolved to paths on the device);
    base: the device's CoAP URI without a path, as the Hosting HTTP URIs use it."""
    title = "CoAP device" + (f" {device}" if device else "s")
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)} · iotctl coap proxy</title>",
        '<link rel="stylesheet" href="/.iotctl/page.css">',
        '<script src="/.iotctl/page.js" defer></script>',
        "</head><body>",
        f"<h1>{escape(title)}</h1>",
        '<form method="get" action="/"><label>Device <input name="device" placeholder="coap://127.0.0.1:5683" '
        f'value="{escape(device or "", quote=True)}" required></label> <button type="submit">List resources</button></form>',
    ]
    if error:
        out.append(f'<p class="error" id="error">{escape(error)}</p>')
    if device and links is not None and base is not None:
        observed = [link["href"] for link in links if link.get("obs")]
        live = ""
        if observed:
            live = "/.iotctl/observe?" + urlencode([("device", base)] + [("path", p) for p in observed])
        out.append(f'<p class="muted">{len(links)} resource(s) from {escape(base)}/.well-known/core; '
                   f'observable values update live (<span id="status">{"connecting" if observed else "nothing observable"}</span>).</p>')
        out.append(f'<table id="resources" data-observe="{escape(live, quote=True)}"><thead><tr>'
                   "<th>Resource</th><th>Value</th><th>Updated</th><th>ct</th><th>rt</th><th>if</th><th>Title</th>"
                   "</tr></thead><tbody>")
        for link in links:
            path = link["href"]
            uri = hc_prefix + hosting(base) + quote(path, safe="/!$&'()*+,;=:@?%")
            observe = bool(link.get("obs"))
            attrs = f' data-path="{escape(path, quote=True)}" data-uri="{escape(uri, quote=True)}"'
            if observe:
                attrs += ' data-observe="1"'
            value = "…" if observe else '<button type="button" class="get">GET</button>'
            cells = [f'<a href="{escape(uri, quote=True)}">{escape(path)}</a>',
                     value, "", _attr(link.get("ct", "")), _attr(link.get("rt", "")), _attr(link.get("if", "")),
                     _attr(link.get("title", ""))]
            out.append(f"<tr{attrs}><td>{cells[0]}</td><td class=\"value\">{cells[1]}</td>"
                       f"<td class=\"updated muted\"></td>"
                       + "".join(f"<td>{escape(c)}</td>" for c in cells[3:]) + "</tr>")
        out.append("</tbody></table>")
    elif not device:
        out.append('<p class="muted">Name a CoAP device (coap:// or coap+tcp://) to list its resources; '
                   "any resource is also reachable as <code>/hc/coap://HOST:PORT/PATH</code>, and with "
                   "<code>Accept: text/event-stream</code> observed as server-sent events.</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"

