/* The twisted_kv dashboard: cluster view, key browser, live feed, files.
 *
 * Everything talks to the node that served the page: GET /cluster every
 * second, /kv for keys, /ws for the live feed, /files/ for files.
 * Text from the store is only ever put in the page with textContent.
 */
(function () {
  "use strict";

  const PAGE_SIZE = 25;
  const MAX_EVENTS = 200;
  const MAX_SHOWN_BYTES = 64 * 1024;

  const $ = (id) => document.getElementById(id);

  /* el("li", {class: "x", dataset: {name: "k"}}, "text", child) */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function keyURL(key) {
    // "/" too is escaped: the node decodes the whole rest of the path, and a
    // key such as "a/../b" must not be normalised by the browser.
    return "/kv/" + encodeURIComponent(key);
  }

  function fileURL(path) {
    return "/files" + path.split("/").map(encodeURIComponent).join("/");
  }

  function formatBytes(size) {
    if (typeof size !== "number" || !isFinite(size)) return "";
    if (size < 1024) return size + " B";
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let value = size;
    let unit = -1;
    do {
      value /= 1024;
      unit += 1;
    } while (value >= 1024 && unit < units.length - 1);
    return value.toFixed(value < 10 ? 1 : 0) + " " + units[unit];
  }

  function formatRate(rate) {
    return (rate < 10 ? rate.toFixed(1) : Math.round(rate).toString()) + "/s";
  }

  function unquote(etag) {
    return (etag || "").replace(/^W\//, "").replace(/^"|"$/g, "");
  }

  function setStatus(node, text, isError) {
    node.textContent = text;
    node.classList.toggle("error", Boolean(isError));
  }

  function debounce(fn, delay) {
    let timer = null;
    return function () {
      clearTimeout(timer);
      timer = setTimeout(fn, delay);
    };
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /* fetch() that throws an ApiError with the node's message on errors. */
  async function api(method, url, options) {
    let response;
    try {
      response = await fetch(url, Object.assign({ method: method, cache: "no-store" }, options));
    } catch (error) {
      throw new ApiError(0, "the node did not answer");
    }
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try {
        const body = await response.json();
        if (body && body.message) message = body.message;
      } catch (error) {
        /* not JSON: keep the status line */
      }
      throw new ApiError(response.status, message);
    }
    return response;
  }

  /* ---------------------------------------------------------------- cluster */

  const cluster = { rows: new Map(), previous: new Map() };

  /* The cells of a node's row, created once so that focus stays put. */
  function nodeCells(id) {
    const known = cluster.rows.get(id);
    if (known) return known.cells;
    const cells = {
      name: el("td"),
      state: el("td", { "data-label": "State" }),
      keys: el("td", { class: "num", "data-label": "Keys" }),
      primaries: el("td", { class: "num", "data-label": "Primaries" }),
      synced: el("td", { "data-label": "Synced" }),
      bar: el("span"),
      rate: el("output"),
      executed: el("td", { class: "num", "data-label": "Executed" }),
    };
    const row = el(
      "tr",
      { dataset: { node: id } },
      cells.name,
      cells.state,
      cells.keys,
      cells.primaries,
      cells.synced,
      el(
        "td",
        { "data-label": "Requests/s" },
        el("div", { class: "rate" }, el("div", { class: "bar", "aria-hidden": "true" }, cells.bar), cells.rate)
      ),
      cells.executed
    );
    cluster.rows.set(id, { row: row, cells: cells });
    $("nodes").append(row);
    return cells;
  }

  function formatSilence(seconds) {
    return seconds < 10 ? seconds.toFixed(1) + " s" : Math.round(seconds).toLocaleString() + " s";
  }

  /* A node's key count: "—" once it is dead, marked stale while suspect. */
  function renderKeyCount(cell, node) {
    const silence = typeof node.silent_for === "number" ? formatSilence(node.silent_for) : null;
    const stale = node.state !== "alive";
    let title = "";
    if (node.keys === null || node.keys === undefined) {
      cell.textContent = node.keys === null ? "—" : "";
      title = silence ? "No current count: not heard from for " + silence : "No current count: never heard from";
    } else {
      cell.textContent = Number(node.keys).toLocaleString();
      title = Number(node.keys).toLocaleString() + " client keys";
      if (typeof node.file_records === "number") {
        title += ", " + node.file_records.toLocaleString() + " file records (chunks, manifests, folders)";
      }
      if (stale && silence) title += "; as reported " + silence + " ago";
    }
    cell.title = title;
    cell.classList.toggle("stale", stale);
  }

  function renderSummary(summary) {
    const line = $("cluster-summary");
    if (!summary || typeof summary.text !== "string") {
      line.hidden = true;
      return;
    }
    const tone = summary.alive + summary.suspect < summary.majority ? "bad" : summary.can_lose > 0 ? "ok" : "wait";
    // Rewritten only when it changes: it is a live region.
    if (line.textContent !== summary.text) line.textContent = summary.text;
    line.className = "cluster-summary tone-" + tone;
    line.hidden = false;
    if (typeof summary.replicas === "number") $("replicas").textContent = String(summary.replicas);
  }

  function renderCluster(view) {
    renderSummary(view.summary);
    $("self-id").textContent = view.self || "?";
    $("leader-id").textContent = view.leader || "none elected";
    $("term").textContent = view.term === undefined || view.term === null ? "?" : String(view.term);
    const now = performance.now();
    const nodes = Array.isArray(view.nodes) ? view.nodes : [];
    const rates = new Map();
    for (const node of nodes) {
      const before = cluster.previous.get(node.id);
      let rate = 0;
      if (before && now > before.at && node.executed >= before.executed) {
        rate = (node.executed - before.executed) / ((now - before.at) / 1000);
      }
      rates.set(node.id, rate);
      cluster.previous.set(node.id, { executed: node.executed, at: now });
    }
    const fastest = Math.max(1, ...rates.values());
    const seen = new Set();
    for (const node of nodes) {
      seen.add(node.id);
      const cells = nodeCells(node.id);
      const name = [];
      if (node.http && node.id !== view.self) {
        name.push(el("a", { href: node.http + "/" }, node.id));
      } else {
        name.push(node.id);
      }
      if (node.id === view.leader) name.push(el("span", { class: "tag" }, "leader"));
      if (node.id === view.self) name.push(el("span", { class: "tag self" }, "this node"));
      if (node.role === "joining" || node.role === "leaving") name.push(el("span", { class: "tag" }, node.role));
      const signature = [node.id, node.http, node.id === view.leader, node.id === view.self, node.role].join("|");
      if (cells.name.dataset.signature !== signature) {
        cells.name.replaceChildren(...name);
        cells.name.dataset.signature = signature;
      }
      cluster.rows.get(node.id).row.classList.toggle("leader", node.id === view.leader);
      const state = node.state || "unknown";
      const tone = state === "alive" ? "ok" : state === "suspect" ? "wait" : "bad";
      cells.state.replaceChildren(el("span", { class: "pill pill-" + tone }, state));
      renderKeyCount(cells.keys, node);
      cells.primaries.textContent = typeof node.primaries === "number" ? String(node.primaries) : "";
      cells.synced.textContent = node.synced ? "yes" : "no";
      const rate = rates.get(node.id);
      cells.bar.style.width = Math.round((rate / fastest) * 100) + "%";
      cells.rate.textContent = formatRate(rate);
      cells.executed.textContent = node.executed === undefined ? "" : Number(node.executed).toLocaleString();
    }
    for (const [id, known] of cluster.rows) {
      if (!seen.has(id)) {
        known.row.remove();
        cluster.rows.delete(id);
        cluster.previous.delete(id);
      }
    }
  }

  /* Partitions whose every in-sync copy restarted empty: their data is gone. */
  function renderLost(view) {
    const lost = Array.isArray(view.lost_partitions) ? view.lost_partitions : [];
    const notice = $("lost-partitions");
    notice.textContent = lost.length === 0 ? "" :
      (lost.length === 1 ? "Partition " : "Partitions ") + lost.join(", ") +
      " lost every in-sync copy (all restarted empty): their data is gone, and they will serve again, empty, shortly.";
    notice.hidden = lost.length === 0;
  }

  /* The membership change in progress, and the partitions still moving. */
  function renderChange(view) {
    const change = view.change;
    const moving = Array.isArray(view.moving_partitions) ? view.moving_partitions.length : 0;
    const notice = $("membership-change");
    let text = "";
    if (change) text = (change.kind === "add" ? "Adding " : "Removing ") + change.node + ". ";
    if (moving > 0) text += moving + (moving === 1 ? " partition" : " partitions") + " still moving.";
    if (notice.textContent !== text) notice.textContent = text;
    notice.hidden = text === "";
  }

  async function pollCluster() {
    const problem = $("cluster-error");
    try {
      const view = await (await api("GET", "/cluster")).json();
      renderCluster(view);
      renderLost(view);
      renderChange(view);
      problem.hidden = true;
    } catch (error) {
      problem.textContent = "Cannot read the cluster state from this node: " + error.message;
      problem.hidden = false;
    } finally {
      setTimeout(pollCluster, 1000);
    }
  }

  /* ------------------------------------------------------------------- keys */

  const keys = { prefix: "", starts: [null], index: 0, next: null, selected: null, shown: [] };

  async function listKeys() {
    const params = new URLSearchParams({ prefix: keys.prefix, limit: String(PAGE_SIZE) });
    const start = keys.starts[keys.index];
    if (start !== null) params.set("start_after", start);
    const status = $("keys-status");
    try {
      const page = await (await api("GET", "/kv?" + params.toString())).json();
      keys.next = page.next;
      keys.shown = page.keys;
      renderKeys();
      if (page.keys.length === 0 && keys.index === 0) {
        setStatus(status, keys.prefix ? "No key starts with “" + keys.prefix + "”." : "The store is empty.");
      } else {
        setStatus(status, page.keys.length + (page.next ? "+" : "") + " key" + (page.keys.length === 1 ? "" : "s") + (keys.prefix ? " starting with “" + keys.prefix + "”" : "") + ".");
      }
    } catch (error) {
      setStatus(status, "Cannot list keys: " + error.message, true);
    }
  }

  function renderKeys() {
    const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : undefined;
    const items = keys.shown.map((key) =>
      el(
        "li",
        {},
        el(
          "button",
          {
            type: "button",
            dataset: { key: key },
            "aria-current": key === keys.selected ? "true" : null,
            onclick: () => viewKey(key),
          },
          key
        )
      )
    );
    $("key-list").replaceChildren(...items);
    if (focused !== undefined) {
      const again = Array.from($("key-list").querySelectorAll("button")).find((b) => b.dataset.key === focused);
      if (again) again.focus();
    }
    $("page-prev").disabled = keys.index === 0;
    $("page-next").disabled = keys.next === null;
    $("page-label").textContent = keys.index > 0 || keys.next !== null ? "Page " + (keys.index + 1) : "";
  }

  const refreshKeys = debounce(listKeys, 300);

  /* ----------------------------------------------------------------- viewer */

  const viewer = { key: null, version: null, type: "", text: null, editing: false };

  function note(text) {
    const node = $("view-note");
    node.textContent = text || "";
    node.hidden = !text;
  }

  function decodeText(bytes) {
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch (error) {
      return null;
    }
  }

  function hexPreview(bytes) {
    const shown = Array.from(bytes.slice(0, 256), (b) => b.toString(16).padStart(2, "0"));
    const lines = [];
    for (let i = 0; i < shown.length; i += 16) lines.push(shown.slice(i, i + 16).join(" "));
    return lines.join("\n") + (bytes.length > 256 ? "\n…" : "");
  }

  function showViewer(focus) {
    $("viewer").hidden = false;
    $("viewer-empty").hidden = true;
    if (focus) {
      $("viewer-title").setAttribute("tabindex", "-1");
      $("viewer-title").focus();
    }
  }

  function setEditing(editing) {
    viewer.editing = editing;
    $("edit-form").hidden = !editing;
    $("view-actions").hidden = editing;
    $("view-value").hidden = editing;
    if (editing) {
      $("edit-value").value = viewer.text;
      $("edit-type").value = viewer.type;
      $("edit-value").focus();
    }
  }

  async function viewKey(key, quiet) {
    const first = viewer.key !== key;
    viewer.key = key;
    keys.selected = key;
    renderKeys();
    $("viewer-title").textContent = key;
    $("view-key").textContent = key;
    if (first) setEditing(false);
    showViewer(!quiet);
    try {
      const response = await api("GET", keyURL(key));
      const bytes = new Uint8Array(await response.arrayBuffer());
      if (viewer.key !== key) return;
      viewer.version = unquote(response.headers.get("ETag"));
      viewer.type = response.headers.get("Content-Type") || "";
      viewer.text = decodeText(bytes);
      $("view-version").textContent = viewer.version;
      $("view-type").textContent = viewer.type;
      $("view-size").textContent = formatBytes(bytes.length);
      const value = $("view-value");
      if (viewer.text === null) {
        value.textContent = hexPreview(bytes);
        note("Binary value: the first bytes are shown in hexadecimal.");
      } else {
        value.textContent = viewer.text.length > MAX_SHOWN_BYTES ? viewer.text.slice(0, MAX_SHOWN_BYTES) + "\n…" : viewer.text;
        note(response.headers.get("X-KV-Degraded") === "true" ? "Read without a majority of the cluster: this value may be stale." : "");
      }
      $("view-edit").disabled = viewer.text === null;
      $("view-delete").disabled = false;
    } catch (error) {
      if (viewer.key !== key) return;
      viewer.version = null;
      $("view-version").textContent = "";
      $("view-size").textContent = "";
      $("view-value").textContent = "";
      $("view-edit").disabled = true;
      $("view-delete").disabled = true;
      note(error.status === 404 ? "This key does not exist (any more)." : "Cannot read this key: " + error.message);
    }
  }

  function closeViewer() {
    const key = viewer.key;
    viewer.key = null;
    keys.selected = null;
    setEditing(false);
    $("viewer").hidden = true;
    $("viewer-empty").hidden = false;
    renderKeys();
    const button = Array.from($("key-list").querySelectorAll("button")).find((b) => b.dataset.key === key);
    (button || $("prefix")).focus();
  }

  async function saveEdit(event) {
    event.preventDefault();
    const key = viewer.key;
    try {
      const response = await api("PUT", keyURL(key), {
        body: $("edit-value").value,
        headers: { "Content-Type": $("edit-type").value || "application/octet-stream", "If-Match": '"' + viewer.version + '"' },
      });
      const written = await response.json();
      setEditing(false);
      await viewKey(key, true);
      note("Saved: version " + written.version + ".");
      $("view-edit").focus();
    } catch (error) {
      note(
        error.status === 412
          ? "Not saved: the key changed (or was deleted) since you opened it. Cancel to see its current value."
          : "Not saved: " + error.message
      );
    }
  }

  async function deleteKey() {
    const key = viewer.key;
    if (!window.confirm("Delete the key “" + key + "”?")) return;
    try {
      await api("DELETE", keyURL(key), { headers: { "If-Match": '"' + viewer.version + '"' } });
      setStatus($("keys-status"), "Deleted “" + key + "”.");
      closeViewer();
      listKeys();
    } catch (error) {
      note(error.status === 412 ? "Not deleted: the key changed since you opened it." : "Not deleted: " + error.message);
    }
  }

  async function createKey(event) {
    event.preventDefault();
    const key = $("new-key").value;
    const status = $("create-status");
    if (!key) {
      setStatus(status, "A key is needed.", true);
      $("new-key").focus();
      return;
    }
    const ttl = $("new-ttl").value;
    try {
      const response = await api("POST", keyURL(key) + (ttl ? "?ttl=" + encodeURIComponent(ttl) : ""), {
        body: $("new-value").value,
        headers: { "Content-Type": $("new-type").value || "application/octet-stream" },
      });
      const written = await response.json();
      setStatus(status, "Created “" + key + "”, version " + written.version + ".");
      $("new-key").value = "";
      $("new-value").value = "";
      if (key.startsWith(keys.prefix)) refreshKeys();
      viewKey(key, true);
    } catch (error) {
      setStatus(status, error.status === 409 ? "“" + key + "” already exists: open it to edit it." : "Not created: " + error.message, true);
    }
  }

  /* ------------------------------------------------------------------- feed */

  const feed = { revision: null, retries: 0, paused: false, held: [] };

  function setFeedState(text, tone) {
    const pill = $("feed-state");
    pill.textContent = text;
    pill.className = "pill pill-" + tone;
  }

  function timeNow() {
    return new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  function eventRow(frame) {
    const time = el("time", { datetime: new Date().toISOString() }, timeNow());
    if (frame.type === "compacted") {
      return el("li", { class: "notice-row" }, "Some changes were missed while the feed was away: key and file lists were reloaded.");
    }
    const kind = el("span", { class: "kind kind-" + frame.type }, frame.type === "file" ? frame.op : frame.type);
    let what;
    const details = ["revision " + frame.revision];
    let name;
    if (frame.type === "file") {
      name = frame.path;
      what = el("span", { class: "what" }, frame.op === "deleted" ? frame.path : el("a", { href: fileURL(frame.path), download: "" }, frame.path));
      if (frame.from) details.unshift("from " + frame.from);
      if (typeof frame.size === "number" && frame.op !== "deleted") details.push(formatBytes(frame.size));
    } else {
      name = frame.key;
      what = el("span", { class: "what" }, el("a", { href: "#keys", onclick: (e) => { e.preventDefault(); viewKey(frame.key); } }, frame.key));
      details.push("version " + frame.version);
    }
    const detail = el("span", { class: "detail" }, details.join(" · "));
    if (frame.type === "put") {
      const preview = frame.encoding === "base64" ? "binary" : frame.value.length > 80 ? frame.value.slice(0, 80) + "…" : frame.value;
      detail.append(" · ", frame.encoding === "base64" ? preview : el("q", {}, preview));
    }
    return el("li", { dataset: { name: name, type: frame.type } }, time, kind, what, detail);
  }

  function matchesFilter(row) {
    const filter = $("event-filter").value;
    return !filter || (row.dataset.name || "").includes(filter);
  }

  function showEvent(frame) {
    const row = eventRow(frame);
    row.hidden = !matchesFilter(row);
    const list = $("event-list");
    list.prepend(row);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  function addEvent(frame) {
    if (feed.paused) {
      feed.held.push(frame);
      if (feed.held.length > MAX_EVENTS) feed.held.shift();
      $("events-pause").textContent = "Resume (" + feed.held.length + " new)";
    } else {
      showEvent(frame);
    }
  }

  function keyChanged(frame) {
    if (frame.key.startsWith(keys.prefix)) refreshKeys();
    if (frame.key !== viewer.key) return;
    if (viewer.editing) {
      note("Someone else changed this key while you edit it: saving will be refused.");
    } else {
      viewKey(frame.key, true);
    }
  }

  function handleFrame(frame) {
    switch (frame.type) {
      case "watching":
        if (feed.revision === null) feed.revision = frame.revision;
        return;
      case "compacted":
        feed.revision = frame.revision;
        addEvent(frame);
        listKeys();
        loadFiles();
        return;
      case "put":
      case "delete":
      case "expire":
        feed.revision = Math.max(feed.revision || 0, frame.revision);
        addEvent(frame);
        keyChanged(frame);
        return;
      case "file":
        feed.revision = Math.max(feed.revision || 0, frame.revision);
        addEvent(frame);
        refreshFiles();
        return;
      case "error":
        console.warn("The node refused a watch:", frame.message);
        return;
      default:
        return;
    }
  }

  /* The feed's URL.  On a node with users the browser logged in to load
     the page, but sends no credentials with a WebSocket: a token from
     /auth/token goes in the query instead. */
  async function feedURL() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    if (document.body.dataset.login !== "token") return url;
    const issued = await (await api("POST", "/auth/token")).json();
    return url + "?token=" + encodeURIComponent(issued.token);
  }

  function retryFeed() {
    const delay = Math.min(10000, 500 * Math.pow(2, feed.retries));
    feed.retries += 1;
    setFeedState("offline, retrying in " + Math.ceil(delay / 1000) + " s", "bad");
    setTimeout(connectFeed, delay);
  }

  async function connectFeed() {
    let socket;
    try {
      socket = new WebSocket(await feedURL());
    } catch (error) {
      if (error instanceof ApiError) {
        retryFeed();
      } else {
        setFeedState("unavailable", "bad");
      }
      return;
    }
    setFeedState(feed.retries ? "reconnecting" : "connecting", "wait");
    socket.addEventListener("open", () => {
      feed.retries = 0;
      setFeedState("live", "ok");
      const since = feed.revision === null ? {} : { since: feed.revision };
      socket.send(JSON.stringify(Object.assign({ op: "watch", prefix: "" }, since)));
      socket.send(JSON.stringify(Object.assign({ op: "watch_files", path: "" }, since)));
    });
    socket.addEventListener("message", (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      handleFrame(frame);
    });
    socket.addEventListener("close", retryFeed);
  }

  function togglePause() {
    feed.paused = !feed.paused;
    const button = $("events-pause");
    button.setAttribute("aria-pressed", String(feed.paused));
    button.textContent = feed.paused ? "Resume" : "Pause";
    if (!feed.paused) {
      const held = feed.held;
      feed.held = [];
      held.forEach(showEvent);
    }
  }

  /* ------------------------------------------------------------------ files */

  /* The folder the file list opens on: the logged-in user's file area
   * (the page's data-files; "" when the user has none), or the root. */
  const FILES_ROOT = document.body.dataset.files === undefined ? "/" : document.body.dataset.files;
  const files = { dir: FILES_ROOT || "/" };

  /* The entries of a /files/ directory listing, with absolute paths. */
  function fileEntries(listing) {
    const base = typeof listing.path === "string" ? listing.path.replace(/\/?$/, "/") : files.dir;
    const list = Array.isArray(listing) ? listing : listing.entries || listing.files || [];
    return list
      .map((entry) => (typeof entry === "string" ? { name: entry } : entry))
      .filter((entry) => typeof (entry.name || entry.path) === "string")
      .map((entry) => ({
        path: entry.path || base + entry.name,
        name: entry.name || entry.path,
        size: entry.size,
        modified: entry.modified,
        directory: entry.type === "directory",
      }));
  }

  function openFolder(dir) {
    files.dir = dir;
    loadFiles().then(() => {
      const first = $("file-list").querySelector("a, button");
      if (first) first.focus();
    });
  }

  function fileItem(entry) {
    const when = typeof entry.modified === "number" ? new Date(entry.modified * 1000).toLocaleString() : "";
    if (entry.directory) {
      return el(
        "li",
        {},
        el("button", { type: "button", class: "link", onclick: () => openFolder(entry.path + "/") }, entry.name + "/"),
        el("span", { class: "muted" }, "folder")
      );
    }
    return el(
      "li",
      {},
      el("a", { href: fileURL(entry.path), download: entry.name }, entry.name),
      el("span", { class: "muted", title: when }, formatBytes(entry.size))
    );
  }

  async function loadFiles() {
    const status = $("files-status");
    $("files-dir").textContent = files.dir;
    if (!FILES_ROOT) {
      setStatus(status, "Your user has no file area.");
      $("file-list").replaceChildren();
      return;
    }
    let listing;
    try {
      const response = await fetch(fileURL(files.dir), { headers: { Accept: "application/json" }, cache: "no-store" });
      if ((response.status === 404 || response.status === 403) && files.dir !== FILES_ROOT) {
        files.dir = FILES_ROOT;
        return loadFiles();
      }
      if (response.status === 403 || (response.status === 404 && FILES_ROOT !== "/")) {
        // a user's own area exists once something is stored in it
        setStatus(status, response.status === 404 ? "This folder is empty." : "Your user may not list this folder.", response.status === 403);
        $("file-list").replaceChildren();
        return;
      }
      if (!response.ok || !(response.headers.get("Content-Type") || "").includes("json")) {
        setStatus(status, "This node offers no file listing; files are reachable over FTP.");
        $("file-list").replaceChildren();
        return;
      }
      listing = await response.json();
    } catch (error) {
      setStatus(status, "Cannot list files: the node did not answer.", true);
      return;
    }
    const entries = fileEntries(listing).sort((a, b) => (b.directory - a.directory) || a.name.localeCompare(b.name));
    const items = entries.map(fileItem);
    if (files.dir !== FILES_ROOT) {
      const parent = files.dir.replace(/[^/]+\/$/, "");
      items.unshift(el("li", {}, el("button", { type: "button", class: "link", onclick: () => openFolder(parent) }, "↑ Parent folder"), el("span", {})));
    }
    $("file-list").replaceChildren(...items);
    const count = entries.length;
    setStatus(status, count ? count + " entr" + (count === 1 ? "y" : "ies") + "." : "This folder is empty.");
  }

  const refreshFiles = debounce(loadFiles, 500);

  /* ------------------------------------------------------------------- wire */

  $("list-form").addEventListener("submit", (event) => {
    event.preventDefault();
    keys.prefix = $("prefix").value;
    keys.starts = [null];
    keys.index = 0;
    listKeys();
  });
  $("page-next").addEventListener("click", () => {
    if (keys.next === null) return;
    keys.starts[keys.index + 1] = keys.next;
    keys.index += 1;
    listKeys();
  });
  $("page-prev").addEventListener("click", () => {
    if (keys.index === 0) return;
    keys.index -= 1;
    listKeys();
  });
  $("view-edit").addEventListener("click", () => setEditing(true));
  $("edit-cancel").addEventListener("click", () => {
    setEditing(false);
    viewKey(viewer.key, true);
    $("view-edit").focus();
  });
  $("edit-form").addEventListener("submit", saveEdit);
  $("view-delete").addEventListener("click", deleteKey);
  $("view-close").addEventListener("click", closeViewer);
  $("create-form").addEventListener("submit", createKey);
  $("events-pause").addEventListener("click", togglePause);
  $("events-clear").addEventListener("click", () => {
    $("event-list").replaceChildren();
    feed.held = [];
    if (feed.paused) $("events-pause").textContent = "Resume";
  });
  $("event-filter").addEventListener("input", () => {
    for (const row of $("event-list").children) row.hidden = !matchesFilter(row);
  });
  $("files-refresh").addEventListener("click", loadFiles);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && viewer.key !== null && !$("viewer").hidden) {
      if (viewer.editing) $("edit-cancel").click();
      else closeViewer();
    }
  });

  pollCluster();
  listKeys();
  loadFiles();
  connectFeed();
})();
