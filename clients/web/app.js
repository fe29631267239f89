// scorestream browser client: plain JS, no build step (Chromium, Firefox).
// Streams a played file or the microphone (AudioWorklet, mono float32) to the server's websocket
// (docs/protocol.md) and shows the current page with a cursor on the current system.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const wsUrl = params.get("server") ||
    `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws${token ? "?token=" + encodeURIComponent(token) : ""}`;

  // state, also readable by tests through window.scorestream
  const S = window.scorestream = {
    results: 0, events: [], pageTurns: 0, shown: { piece: null, page: null }, last: null, ready: null, error: null,
    sent: 0, closed: false,
  };
  let ctx = null, node = null, ws = null, source = null, micStream = null, sink = null;
  let turnedAhead = false;
  const AUDIO_START_TIMEOUT_MS = 3000;          // how long to wait for the browser's audio to start

  function setConn(text, on) { $("conn").textContent = text; $("conn").classList.toggle("on", !!on); }
  function setMessage(text) { $("message").textContent = text || ""; }

  function pageUrl(piece, page) {
    return `/pages/${encodeURIComponent(piece)}/${page}.png${token ? "?token=" + encodeURIComponent(token) : ""}`;
  }

  function showPage(piece, page) {
    if (S.shown.piece === piece && S.shown.page === page) return;
    S.shown = { piece, page };
    const img = $("page");
    img.src = pageUrl(piece, page);
    img.alt = `page ${page} of ${piece}`;
    img.hidden = false;
    $("placeholder").hidden = true;
    document.body.dataset.page = String(page);
  }

  function placeCursor(r) {
    const img = $("page"), cur = $("cursor"), box = $("sysbox");
    const visible = r && r.state === "tracking" && r.piece === S.shown.piece && r.page === S.shown.page &&
      r.x != null && r.bbox && r.page_size && img.complete && img.naturalWidth > 0;
    cur.hidden = box.hidden = !visible;
    if (!visible) { document.body.dataset.cursor = ""; return; }
    const k = img.clientWidth / r.page_size[0];
    const [x0, y0, x1, y1] = r.bbox;
    box.style.left = `${x0 * k}px`; box.style.top = `${y0 * k}px`;
    box.style.width = `${(x1 - x0) * k}px`; box.style.height = `${(y1 - y0) * k}px`;
    cur.style.left = `${r.x * k}px`; cur.style.top = `${(y0 - 6) * k}px`; cur.style.height = `${(y1 - y0 + 12) * k}px`;
    document.body.dataset.cursor = `${Math.round(r.x)},${Math.round(r.y)}`;
  }

  function onResult(r) {
    S.results++;
    S.last = r;
    document.body.dataset.state = r.state;
    $("state").textContent = r.state === "tracking" ? "tracking" : r.state;   // "unknown" is shown as it is
    $("confidence").value = r.confidence || 0;
    $("confv").textContent = (r.confidence || 0).toFixed(2);
    $("time").textContent = `${(r.t || 0).toFixed(1)} s` + (r.dropped_windows ? ` · ${r.dropped_windows} windows dropped` : "");
    if (r.state === "tracking" && r.piece) {
      $("title").textContent = r.title || r.piece;
      $("where").textContent = `page ${r.page}, system ${r.system}`;
      $("progress").style.width = `${Math.round(100 * (r.progress || 0))}%`;
      // follow the result's page unless we turned ahead of it (page_turn comes a little early)
      if (S.shown.piece !== r.piece || (r.page !== S.shown.page && !(turnedAhead && r.page === S.shown.page - 1))) {
        showPage(r.piece, r.page);
        turnedAhead = false;
      } else if (r.page === S.shown.page) {
        turnedAhead = false;
      }
    } else {
      $("title").textContent = r.state === "unknown" ? "unknown — not a piece of the library" : "searching…";
      $("where").textContent = "";
    }
    placeCursor(r);
  }

  function onEvent(e) {
    S.events.push(e);
    const li = document.createElement("li");
    li.textContent = `${(e.t || 0).toFixed(1)} s  ${e.kind}${e.piece ? " " + e.piece : ""}${e.page ? " page " + e.page : ""}`;
    $("events").prepend(li);
    if (e.kind === "page_turn" && e.piece && e.page) {
      S.pageTurns++;
      if (S.shown.piece === e.piece && e.page !== S.shown.page) {
        showPage(e.piece, e.page);
        turnedAhead = true;
        placeCursor(S.last);
      }
    } else if (e.kind === "jump" && e.piece && e.page) {
      showPage(e.piece, e.page);
      turnedAhead = false;
    }
  }

  function connect(sampleRate) {
    return new Promise((resolve, reject) => {
      const sock = ws = new WebSocket(wsUrl);
      sock.binaryType = "arraybuffer";
      S.closed = false;
      sock.onopen = () => {
        sock.send(JSON.stringify({ type: "hello", version: 1, sample_rate: sampleRate, channels: 1, format: "float32",
                                 mode: "identify", encoding: "json", realtime: true }));
      };
      sock.onmessage = (m) => {
        if (sock !== ws) return;
        let msg;
        try { msg = JSON.parse(m.data); } catch (err) { return; }
        if (msg.type === "ready") { S.ready = msg; setConn(`connected · ${msg.stream}`, true); resolve(); }
        else if (msg.type === "result") onResult(msg.result);
        else if (msg.type === "event") onEvent(msg.event);
        else if (msg.type === "error") { S.error = msg; setMessage(`server: ${msg.message}`); reject(new Error(msg.message)); }
        else if (msg.type === "bye") setMessage(`stream ended: ${msg.audio_seconds} s, ${msg.dropped_windows} windows dropped`);
      };
      sock.onclose = (e) => {
        if (sock !== ws) return;
        S.closed = true;
        setConn(`not connected${e.code !== 1000 && e.code !== 1005 ? " (" + e.code + (e.reason ? " " + e.reason : "") + ")" : ""}`, false);
        reject(new Error(`connection closed (${e.code})`));
        stopAudio();
      };
      sock.onerror = () => sock === ws && setMessage(`cannot reach the server at ${wsUrl}`);
    });
  }

  async function audioGraph() {
    if (!ctx) {
      ctx = new AudioContext();
      ctx.onstatechange = () => {
        if (ctx.state === "running" && $("message").textContent.includes("audio has not started")) setMessage("");
      };
      await ctx.audioWorklet.addModule("worklet.js");
    }
    if (ctx.state !== "running") {
      // Firefox starts a context only once an audio output device opens, and its resume() may never
      // settle without one: wait a little, then go on and say why nothing may be sent.
      const started = await Promise.race([ctx.resume().then(() => true, () => false),
                                          new Promise((r) => setTimeout(() => r(false), AUDIO_START_TIMEOUT_MS))]);
      if (!started && ctx.state !== "running")
        setMessage("the browser's audio has not started (no audio output device?); streaming begins when it does");
    }
    node = new AudioWorkletNode(ctx, "pcm-sender", { processorOptions: { blockMs: 100 } });
    node.port.onmessage = (e) => {
      if (ws && ws.readyState === WebSocket.OPEN && S.ready) { ws.send(e.data); S.sent += e.data.byteLength / 4; }
    };
    return node;
  }

  function resetView() {
    S.results = 0; S.events = []; S.pageTurns = 0; S.last = null; S.ready = null; S.error = null; S.sent = 0;
    S.shown = { piece: null, page: null };
    $("events").textContent = ""; setMessage("");
    document.body.dataset.state = "searching";
    $("state").textContent = "searching"; $("title").textContent = "searching…";
  }

  async function start(kind) {
    if (ws) {                                   // a new stream replaces the old one at once
      const old = ws; ws = null;
      if (old.readyState === WebSocket.OPEN) old.send(JSON.stringify({ type: "bye" }));
      stopAudio();
    }
    resetView();
    try {
      const n = await audioGraph();
      await connect(ctx.sampleRate);
      if (kind === "mic") {
        micStream = await navigator.mediaDevices.getUserMedia(
          { audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 } });
        source = ctx.createMediaStreamSource(micStream);
        sink = ctx.createGain(); sink.gain.value = 0;          // keep the graph pulled, play nothing back
        source.connect(n); n.connect(sink); sink.connect(ctx.destination);
      } else {
        const player = $("player");
        if (!player._source) player._source = ctx.createMediaElementSource(player);
        source = player._source;
        source.connect(n); n.connect(ctx.destination);          // the file plays to the speakers, in sync
        player.currentTime = 0;
        player.onended = () => bye();
        await player.play();
      }
      $("stop").disabled = false;
    } catch (err) {
      setMessage(String(err.message || err));
      stop();
    }
  }

  function stopAudio() {
    if (micStream) { micStream.getTracks().forEach((t) => t.stop()); micStream = null; }
    const player = $("player");
    if (!player.paused) player.pause();
    if (source) { try { source.disconnect(); } catch (e) { /* already */ } source = null; }
    if (node) { node.port.onmessage = null; try { node.disconnect(); } catch (e) { /* already */ } node = null; }
    if (sink) { try { sink.disconnect(); } catch (e) { /* already */ } sink = null; }
    $("stop").disabled = true;
  }

  function bye() {
    const sock = ws, n0 = node;
    if (node) node.port.postMessage("flush");
    setTimeout(() => {                            // let the worklet's last block go out first
      if (sock && sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify({ type: "bye" }));
      if (node === n0) stopAudio();
    }, 150);
  }

  function stop() {
    if (ws && ws.readyState === WebSocket.OPEN) bye(); else stopAudio();
  }

  $("file").addEventListener("change", () => {
    const f = $("file").files[0];
    $("play").disabled = !f;
    if (f) $("player").src = URL.createObjectURL(f);
  });
  $("play").addEventListener("click", () => start("file"));
  $("mic").addEventListener("click", () => start("mic"));
  $("stop").addEventListener("click", () => stop());
  $("page").addEventListener("load", () => placeCursor(S.last));
  window.addEventListener("resize", () => placeCursor(S.last));
  S.start = start;
  S.stop = stop;
})();
