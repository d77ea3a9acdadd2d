// Berth's dashboard: reads GET /dashboard/data and draws it with uPlot, again every `refresh`
// seconds (15 unless the page's URL says ?refresh=N), without reloading the page.
// Every figure shown in a headline carries its exact value in `data-value`; the charts and the
// last data are in `window.berthDashboard`, for the console and the browser tests.
"use strict";

(() => {
  const HEIGHT = 220;
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const params = new URLSearchParams(window.location.search);
  if (params.has("key")) {
    // the login already set the cookie: keep the key out of the address bar and the history
    params.delete("key");
    replaceQuery();
  }
  const refreshSeconds = Math.min(3600, Math.max(2, Number(params.get("refresh")) || 15));
  const state = {
    model: params.get("model"),
    version: params.get("version"),
    minutes: Number(params.get("minutes")) || 60,
    refreshSeconds,
    refreshes: 0,
    data: null,
    charts: {},
  };
  window.berthDashboard = state;
  const $ = (id) => document.getElementById(id);
  let timer = null;

  function replaceQuery() {
    const query = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (query ? "?" + query : ""));
  }

  // ---- formatting ------------------------------------------------------------------------

  const count = (n) => Math.round(n).toLocaleString("en-US");
  const percent = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
  const milliseconds = (x) => (x === null ? "–" : (x < 10 ? x.toFixed(2) : x.toFixed(1)) + " ms");
  const seconds = (x) => (x === null ? "–" : x < 1 ? milliseconds(1000 * x) : x.toFixed(2) + " s");
  const number = (x) => (x === null || x === undefined ? "–" : Math.abs(x) >= 100 ? x.toFixed(1) : x.toPrecision(3));

  // "2026-12-01 09:11", in UTC whatever offset the time came with
  const utcMinute = (iso) => new Date(iso).toISOString().slice(0, 16).replace("T", " ");

  function windowLabel(minutes) {
    if (minutes % 1440 === 0 && minutes > 1440) return `in the last ${minutes / 1440} days`;
    if (minutes === 60) return "in the last hour";
    if (minutes % 60 === 0) return `in the last ${minutes / 60} hours`;
    return `in the last ${minutes} minutes`;
  }

  function figure(element, value, text) {
    element.dataset.value = value === null || value === undefined ? "" : String(value);
    element.textContent = text;
  }

  function figureList(list, items) {
    // items: [{name, value, text, ...data}]
    list.replaceChildren(
      ...items.map((item) => {
        const li = document.createElement("li");
        for (const [key, value] of Object.entries(item.data || {})) {
          li.dataset[key] = value === null || value === undefined ? "" : String(value);
        }
        li.textContent = item.text;
        return li;
      }),
    );
  }

  // ---- charts ----------------------------------------------------------------------------

  function dayStart(day) {
    const [y, m, d] = day.split("-").map(Number);
    return Date.UTC(y, m - 1, d) / 1000;
  }

  function axis(format, side) {
    const options = { side: side === undefined ? 3 : side, scale: side === 1 ? "right" : "y", grid: { show: side !== 1 }, size: 70 };
    if (format) options.values = (_plot, ticks) => ticks.map(format);
    return options;
  }

  function note(key, text) {
    const target = $("chart-" + key);
    if (state.charts[key]) {
      state.charts[key].plot.destroy();
      delete state.charts[key];
    }
    target.classList.add("empty");
    target.textContent = text;
  }

  // series: [{label, color, dash, scale, bars, dots}], data: [xs, ...ys]; options.x and
  // options.xAxis replace the time axis (with options.signature saying when its ticks change)
  function draw(key, series, data, options) {
    const target = $("chart-" + key);
    const signature =
      JSON.stringify(series.map((s) => [s.label, s.scale || "y"])) + JSON.stringify(options.axes.length) + (options.signature || "");
    const existing = state.charts[key];
    if (existing && existing.signature === signature) {
      existing.plot.setData(data);
      return;
    }
    if (existing) existing.plot.destroy();
    // days: half a day of margin, so that the first and last days show whole
    const x = options.x || (options.days ? { time: true, range: (_u, min, max) => [min - 43200, max + 43200] } : { time: true });
    target.classList.remove("empty");
    target.textContent = "";
    const plot = new uPlot(
      {
        width: target.clientWidth,
        height: HEIGHT,
        cursor: { drag: { x: false, y: false } },
        legend: { live: false },
        scales: { x, ...(options.scales || { y: options.range === undefined ? {} : { range: options.range } }) },
        axes: [options.xAxis || {}, ...options.axes],
        series: [
          {},
          ...series.map((s) => ({
            label: s.label,
            stroke: s.color,
            fill: s.bars ? s.color + "99" : undefined,
            width: s.bars ? 0 : 2,
            dash: s.dash,
            scale: s.scale || "y",
            // dots: points and no line
            paths: s.bars ? uPlot.paths.bars({ size: [0.8, 40] }) : s.dots ? () => null : undefined,
            // a lone value between gaps is a point, or nothing would show
            points: { show: !s.bars && s.points !== false, size: s.dots ? 9 : 6, fill: s.color },
            spanGaps: false,
          })),
        ],
      },
      data,
      target,
    );
    state.charts[key] = { plot, signature };
  }

  function constant(xs, value) {
    return xs.map(() => value);
  }

  window.addEventListener("resize", () => {
    for (const [key, { plot }] of Object.entries(state.charts)) {
      plot.setSize({ width: $("chart-" + key).clientWidth, height: HEIGHT });
    }
  });

  // ---- panels ----------------------------------------------------------------------------

  function renderTraffic(data) {
    const minutes = data.window.minutes;
    figure($("traffic-total"), data.traffic.total, count(data.traffic.total));
    const rate = data.traffic.total / minutes;
    figure($("traffic-rate"), rate, rate.toFixed(rate < 10 ? 2 : 1));
    $("window-label").textContent = windowLabel(minutes);
    draw("traffic", [{ label: "predictions per minute", color: COLORS[0], bars: true }], [data.buckets, data.traffic.per_minute], {
      axes: [axis(null)],
      range: (_u, _min, max) => [0, Math.max(1, max * 1.1)],
    });
  }

  function renderMix(data) {
    const mix = data.mix;
    const xs = data.buckets;
    const series = [];
    const values = [xs];
    const classes = mix.kind === "classes";
    const scale = classes ? 100 : 1;
    mix.series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      series.push({ label: s.name, color });
      values.push(s.values.map((v) => (v === null ? null : scale * v)));
      if (s.training !== null) {
        series.push({ label: s.name + " (training)", color, dash: [6, 4], points: false });
        values.push(constant(xs, scale * s.training));
      }
    });
    const training = mix.series.some((s) => s.training !== null);
    $("mix-title").textContent =
      (classes ? "Class mix" : "Answered values, p10 / p50 / p90") +
      (training ? " (dashed: the training data)" : " (no training reference for this version)");
    figureList(
      $("mix-figures"),
      mix.series.map((s) => ({
        data: { name: s.name, value: s.window, training: s.training },
        text: classes
          ? `${s.name} ${percent(s.window)}` + (s.training === null ? "" : ` (training ${percent(s.training)})`)
          : `${s.name} ${number(s.window)}` + (s.training === null ? "" : ` (training ${number(s.training)})`),
      })),
    );
    draw("mix", series, values, {
      axes: [axis((v) => (classes ? v + "%" : number(v)))],
      range: classes ? [0, 100] : undefined,
    });
  }

  function renderLatency(data) {
    const latency = data.latency;
    figure($("latency-p50"), latency.p50_ms, milliseconds(latency.p50_ms));
    figure($("latency-p99"), latency.p99_ms, milliseconds(latency.p99_ms));
    draw(
      "latency",
      [
        { label: "p50", color: COLORS[0] },
        { label: "p99", color: COLORS[1] },
      ],
      [data.buckets, latency.p50, latency.p99],
      { axes: [axis((v) => v + " ms")], range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] },
    );
  }

  function renderCache(data) {
    figure($("cache-hit-rate"), data.cache.hit_rate, percent(data.cache.hit_rate));
    draw(
      "cache",
      [{ label: "cache hits", color: COLORS[2] }],
      [data.buckets, data.cache.series.map((v) => (v === null ? null : 100 * v))],
      { axes: [axis((v) => v + "%")], range: [0, 100] },
    );
  }

  function renderLedger(data) {
    const ledger = data.ledger;
    figure($("ledger-lag"), ledger.lag_p99_seconds, seconds(ledger.lag_p99_seconds));
    const backlog = ledger.backlog;
    const element = $("ledger-backlog");
    if (backlog === null) {
      figure(element, null, "unknown (Redis did not say)");
    } else {
      const age = backlog.oldest_waiting_age_seconds;
      figure(
        element,
        backlog.waiting,
        `${count(backlog.waiting)}${backlog.unread_capped ? "+" : ""} entries` + (age === null ? "" : `, oldest ${seconds(age)}`),
      );
    }
    draw("ledger", [{ label: "served → stored p99", color: COLORS[4] }], [data.buckets, ledger.lag_p99], {
      axes: [axis((v) => (v < 1 ? Math.round(1000 * v) + " ms" : v.toFixed(1) + " s"))],
      range: (_u, _min, max) => [0, Math.max(0.1, max * 1.1)],
    });
  }

  function renderQuality(data) {
    const quality = data.quality;
    const list = $("quality-figures");
    if (!quality.available) {
      figureList(list, []);
      note("quality", "The quality view (model_quality_daily) is not in this database yet.");
      return;
    }
    if (quality.latest === null) {
      figureList(list, []);
      note("quality", "No feedback in the last 14 days: send the true outcomes to POST /v1/predictions/{request_id}/feedback.");
      return;
    }
    const day = quality.latest;
    const last = quality.days.indexOf(day);
    const classes = data.task === "classification";
    $("quality-title").textContent = `Quality from feedback, per day (${classes ? "accuracy" : "error"} and label coverage)`;
    const items = [
      { data: { name: "labelled", value: quality.labelled[last], day }, text: `${count(quality.labelled[last])} labelled rows on ${day}` },
      { data: { name: "label_coverage", value: quality.label_coverage[last], day }, text: `coverage ${percent(quality.label_coverage[last])}` },
    ];
    if (classes) {
      items.unshift({ data: { name: "accuracy", value: quality.accuracy[last], day }, text: `accuracy ${percent(quality.accuracy[last])}` });
    } else {
      items.unshift(
        { data: { name: "mae", value: quality.mae[last], day }, text: `MAE ${number(quality.mae[last])}` },
        { data: { name: "rmse", value: quality.rmse[last], day }, text: `RMSE ${number(quality.rmse[last])}` },
      );
    }
    figureList(list, items);
    const xs = quality.days.map(dayStart);
    const pct = (values) => values.map((v) => (v === null ? null : 100 * v));
    if (classes) {
      draw(
        "quality",
        [
          { label: "accuracy", color: COLORS[2] },
          { label: "label coverage", color: COLORS[7], dash: [6, 4] },
        ],
        [xs, pct(quality.accuracy), pct(quality.label_coverage)],
        { axes: [axis((v) => v + "%")], range: [0, 100], days: true },
      );
    } else {
      draw(
        "quality",
        [
          { label: "MAE", color: COLORS[1] },
          { label: "RMSE", color: COLORS[3] },
          { label: "label coverage", color: COLORS[7], dash: [6, 4], scale: "right" },
        ],
        [xs, quality.mae, quality.rmse, pct(quality.label_coverage)],
        {
          axes: [axis(number), axis((v) => v + "%", 1)],
          days: true,
          scales: { y: { range: (_u, _min, max) => [0, max * 1.1 || 1] }, right: { range: [0, 100] } },
        },
      );
    }
  }

  function renderDrift(data) {
    const drift = data.drift;
    const list = $("drift-figures");
    if (!drift.available) {
      figureList(list, []);
      note("drift", "The drift views (feature_drift, prediction_drift) are not in this database yet.");
      return;
    }
    if (drift.latest === null) {
      figureList(list, []);
      $("drift-title").textContent = "Drift against the training data";
      note("drift", "No drift figures in the last 14 days: this version has no training reference, or served nothing.");
      return;
    }
    const top = drift.features[0];
    const latest = drift.latest;
    $("drift-title").textContent =
      top && top.psi !== null
        ? `Drift against the training data: ${top.feature} drifts most (PSI ${top.psi.toFixed(3)} on ${latest})`
        : "Drift against the training data";
    figureList(
      list,
      drift.features.map((f) => ({ data: { feature: f.feature, value: f.psi, day: latest }, text: `${f.feature} ${f.psi === null ? "–" : f.psi.toFixed(3)}` })),
    );
    const xs = drift.days.map(dayStart);
    const series = drift.features.map((f, i) => ({ label: f.feature, color: COLORS[i % COLORS.length] }));
    const values = [xs, ...drift.features.map((f) => f.values)];
    series.push({ label: "answers", color: "#555555", dash: [6, 4] });
    values.push(drift.prediction);
    series.push({ label: "PSI 0.25: a large shift", color: "#aaaaaa", dash: [2, 4], points: false });
    values.push(constant(xs, 0.25));
    draw("drift", series, values, {
      days: true,
      axes: [axis((v) => v.toFixed(2))],
      range: (_u, _min, max) => [0, Math.max(0.3, max * 1.1)],
    });
  }

  function renderReplays(data) {
    const replays = data.replays;
    const list = $("replays-figures");
    const name = data.model.name;
    $("replays-title").textContent = "Replays of stored traffic through a candidate";
    if (!replays.available) {
      figureList(list, []);
      note("replays", "The replays table is not in this database yet.");
      return;
    }
    const runs = replays.runs; // newest first
    if (runs.length === 0) {
      figureList(list, []);
      note("replays", `No replays of ${name} yet: score its stored traffic with a candidate, make replay NAME=${name} VERSION=<version>.`);
      return;
    }
    const classes = data.task === "classification";
    $("replays-title").textContent =
      `Replays of ${name}, candidate vs served version, the latest ${runs.length}: agreement with what was served (bars), ` +
      `${classes ? "accuracy" : "MAE"} of both on labelled rows (dots)`;
    // the caption: the newest replay, per version that served its traffic
    const scores = (r) =>
      r.labelled === 0
        ? "no labelled rows"
        : classes
          ? `accuracy ${percent(r.served_accuracy)} served → ${percent(r.candidate_accuracy)} candidate`
          : `MAE ${number(r.served_mae)} served → ${number(r.candidate_mae)} candidate, RMSE ${number(r.served_rmse)} → ${number(r.candidate_rmse)}`;
    figureList(
      list,
      runs
        .filter((r) => r.replay_id === runs[0].replay_id)
        .map((r) => ({
          data: {
            replay: r.replay_id,
            candidate: r.candidate_version,
            served: r.served_version,
            finished: r.finished_at,
            rows: r.rows,
            labelled: r.labelled,
            value: r.agreement,
            servedScore: classes ? r.served_accuracy : r.served_mae,
            candidateScore: classes ? r.candidate_accuracy : r.candidate_mae,
          },
          text:
            `candidate ${r.candidate_version} vs served ${r.served_version} (${utcMinute(r.finished_at)} UTC): ` +
            `${count(r.rows)} rows, agreement ${percent(r.agreement)}, ${scores(r)}` +
            (r.labelled === 0 ? "" : ` (${count(r.labelled)} labelled)`),
        })),
    );
    // the chart: oldest left
    const shown = [...runs].reverse();
    const xs = shown.map((_r, i) => i);
    const labels = shown.map((r) => `${r.candidate_version} vs ${r.served_version}\n${utcMinute(r.finished_at).slice(5)}`);
    const pct = (v) => (v === null ? null : 100 * v);
    const series = [{ label: "agreement", color: COLORS[0], bars: true }];
    const values = [xs, shown.map((r) => pct(r.agreement))];
    const options = {
      x: { time: false, range: () => [-0.5, shown.length - 0.5] },
      xAxis: { splits: () => xs, values: (_u, ticks) => ticks.map((i) => labels[i] || ""), size: 50, grid: { show: false } },
      signature: JSON.stringify(labels),
    };
    if (classes) {
      series.push({ label: "served accuracy", color: COLORS[3], dots: true }, { label: "candidate accuracy", color: COLORS[2], dots: true });
      values.push(shown.map((r) => pct(r.served_accuracy)), shown.map((r) => pct(r.candidate_accuracy)));
      draw("replays", series, values, { ...options, axes: [axis((v) => v + "%")], range: [0, 100] });
    } else {
      series.push(
        { label: "served MAE", color: COLORS[3], dots: true, scale: "right" },
        { label: "candidate MAE", color: COLORS[2], dots: true, scale: "right" },
      );
      values.push(
        shown.map((r) => r.served_mae),
        shown.map((r) => r.candidate_mae),
      );
      draw("replays", series, values, {
        ...options,
        axes: [axis((v) => v + "%"), axis(number, 1)],
        scales: { y: { range: [0, 100] }, right: { range: (_u, _min, max) => [0, max * 1.1 || 1] } },
      });
    }
  }

  function renderModels(data) {
    const select = $("model");
    const current = `${data.model.name}/${data.model.version}`;
    const options = data.models.map((m) => `${m.name}/${m.version}`);
    if (select.options.length !== options.length || [...select.options].some((o, i) => o.value !== options[i])) {
      select.replaceChildren(
        ...options.map((value) => {
          const option = document.createElement("option");
          option.value = value;
          option.textContent = value;
          return option;
        }),
      );
    }
    select.value = current;
    $("minutes").value = String(data.window.minutes);
  }

  function render(data) {
    state.data = data;
    renderModels(data);
    renderTraffic(data);
    renderMix(data);
    renderLatency(data);
    renderCache(data);
    renderLedger(data);
    renderQuality(data);
    renderDrift(data);
    renderReplays(data);
    const root = $("dashboard");
    Object.assign(root.dataset, {
      model: data.model.name,
      version: data.model.version,
      since: data.window.since,
      until: data.window.until,
      refreshes: String(state.refreshes),
      state: "ready",
    });
    const status = $("status");
    status.className = "status";
    status.textContent = `updated ${new Date(data.generated_at).toLocaleTimeString()} · every ${refreshSeconds} s`;
    status.dataset.updated = data.generated_at;
  }

  function showError(text, login) {
    const status = $("status");
    status.className = "status error";
    status.textContent = text + " ";
    if (login) {
      const link = document.createElement("a");
      link.href = "/dashboard/login";
      link.textContent = "log in again";
      status.append(link);
    }
  }

  // ---- loading ---------------------------------------------------------------------------

  async function load() {
    const query = new URLSearchParams({ minutes: String(state.minutes) });
    if (state.model) {
      query.set("model", state.model);
      if (state.version) query.set("version", state.version);
    }
    const response = await fetch("/dashboard/data?" + query, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (response.status === 401) {
      showError("The dashboard needs a key again.", true);
      return;
    }
    const body = await response.json();
    if (!response.ok) {
      showError(`The data could not be read: ${body.detail || body.title || response.status}.`, false);
      return;
    }
    state.refreshes += 1;
    render(body);
  }

  async function tick() {
    clearTimeout(timer);
    try {
      await load();
    } catch (error) {
      showError(`The data could not be read: ${error.message}.`, false);
    } finally {
      timer = setTimeout(tick, refreshSeconds * 1000);
    }
  }

  function choose() {
    const [name, version] = $("model").value.split("/");
    Object.assign(state, { model: name, version, minutes: Number($("minutes").value) });
    params.set("model", name);
    params.set("version", version);
    params.set("minutes", String(state.minutes));
    replaceQuery();
    tick();
  }

  $("model").addEventListener("change", choose);
  $("minutes").addEventListener("change", choose);
  tick();
})();
