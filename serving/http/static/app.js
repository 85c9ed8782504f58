/* ctit clinician page: builds the scoring request from the form, shows the answer.
 *
 * Vanilla JS, no dependencies, nothing fetched from outside this server (all URLs are relative).
 * Pure helpers are exposed as window.ctit for the browser tests.
 */
(function () {
  "use strict";

  // An XML namespace identifier, never fetched.
  var SVG_NS = "http" + "://www.w3.org/2000/svg";
  var TOKEN_KEY = "ctit.bearerToken";
  // The form's fields come from the cohort contract (GET v1/contract, `applyContract`): the
  // patients' and episodes' columns that have an input here, and the patients' yes/no columns.
  var TRISTATE = [];         // boolean columns of `patients` (Yes / No / Not recorded)
  var PATIENT_FIELDS = [];   // columns of `patients` with an input on the form
  var PATIENT_KINDS = {};    // column of `patients` -> its contract kind
  var EPISODE_FIELDS = [];   // columns of `episodes` with an input on the form
  var CLINICAL = [];         // the "Clinical findings" section: ecog, subtype, race and TRISTATE
  var MAX_FACTORS = 8;

  var state = {
    options: null,        // GET ui/options
    analytes: {},         // alias -> analyte
    loincToAlias: {},
    featureInfo: {},      // feature name -> {description, unit, group}
    calibration: null,    // GET v1/model calibration_curve {margin, probability}; null if unavailable
    uid: 0,               // ids for generated rows (stable across removal)
    extras: { patient: {}, episode: {} },  // fields of a loaded file the form has no input for
    fileRecords: [],
    lastSent: null        // {labRows, regimenRows} mapping request indices to DOM rows
  };

  // ---------------------------------------------------------------- pure helpers

  function sigmoid(x) {
    return 1 / (1 + Math.exp(-x));
  }

  /** Parse a number typed by a person: dot decimal, optional sign and exponent; NaN otherwise. */
  function parseNumber(text) {
    var s = String(text).trim();
    if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s)) return NaN;
    return Number(s);
  }

  /**
   * The calibrator as a function of the margin: linear interpolation between the knots of
   * GET v1/model `calibration_curve`, clamped to the end values. Null when the curve is unusable
   * (missing, unequal lengths, fewer than two knots, margins not increasing, probabilities outside [0, 1]).
   */
  function calibrationMap(curve) {
    if (!curve || !Array.isArray(curve.margin) || !Array.isArray(curve.probability)) return null;
    var xs = curve.margin.map(Number);
    var ys = curve.probability.map(Number);
    if (xs.length < 2 || xs.length !== ys.length) return null;
    for (var i = 0; i < xs.length; i++) {
      if (!isFinite(xs[i]) || !isFinite(ys[i]) || ys[i] < 0 || ys[i] > 1) return null;
      if (i > 0 && !(xs[i] > xs[i - 1])) return null;
    }
    return function (m) {
      if (!(m > xs[0])) return ys[0];
      var n = xs.length;
      if (m >= xs[n - 1]) return ys[n - 1];
      var lo = 0, hi = n - 1;  // xs[lo] < m <= xs[hi]
      while (hi - lo > 1) {
        var mid = (lo + hi) >> 1;
        if (xs[mid] < m) lo = mid; else hi = mid;
      }
      return ys[lo] + (ys[hi] - ys[lo]) * (m - xs[lo]) / (xs[hi] - xs[lo]);
    };
  }

  /**
   * Waterfall of SHAP contributions on the probability scale.
   * Factors are ordered by absolute log-odds; the rest are pooled into one "other" step.
   * Each step moves the log-odds by its contribution; its bar runs between the probabilities
   * of the cumulative log-odds before and after, through `toProbability` (the calibrator;
   * the logistic function by default). A finite `finalProbability` (the answer's calibrated
   * probability) becomes the end of the last bar exactly. Returns {base, steps, final} with
   * probabilities and log-odds.
   */
  function waterfallSteps(baseValue, contributions, maxFactors, toProbability, finalProbability) {
    var limit = maxFactors || MAX_FACTORS;
    var prob = toProbability || sigmoid;
    var items = Object.keys(contributions || {}).map(function (k) {
      return { name: k, logodds: Number(contributions[k]) };
    }).filter(function (d) { return isFinite(d.logodds); });
    items.sort(function (a, b) {
      return Math.abs(b.logodds) - Math.abs(a.logodds) || (a.name < b.name ? -1 : 1);
    });
    var shown = items.length > limit + 1 ? items.slice(0, limit) : items;
    var rest = items.slice(shown.length);
    var steps = shown.map(function (d) { return { name: d.name, logodds: d.logodds, kind: "factor" }; });
    if (rest.length) {
      steps.push({
        name: null, count: rest.length, kind: "other",
        logodds: rest.reduce(function (s, d) { return s + d.logodds; }, 0)
      });
    }
    var L = Number(baseValue);
    steps.forEach(function (s) {
      s.start = prob(L);
      L += s.logodds;
      s.end = prob(L);
    });
    var final = { logodds: L, p: prob(L) };
    var pinned = finalProbability !== null && finalProbability !== undefined && isFinite(finalProbability);
    if (pinned) {
      final.p = Number(finalProbability);
      if (steps.length) steps[steps.length - 1].end = final.p;
    }
    return {
      base: { logodds: Number(baseValue), p: prob(Number(baseValue)) },
      steps: steps,
      final: final
    };
  }

  /** Map a FastAPI error `loc` to {section, index, field, sub}; null when it names no field. */
  function locToTarget(loc) {
    var path = (loc || []).slice();
    if (path[0] === "body") path.shift();
    if (!path.length) return null;
    var section = String(path[0]);
    if (section === "patients") section = "patient";
    if (section === "episodes") section = "episode";
    if (section === "patient" || section === "episode") {
      return path.length > 1 ? { section: section, field: String(path[1]) } : { section: section };
    }
    if (section === "labs" || section === "regimens") {
      var t = { section: section };
      if (path.length > 1 && typeof path[1] === "number") t.index = path[1];
      if (path.length > 2) t.field = String(path[2]);
      if (path.length > 3 && typeof path[3] === "number") t.sub = path[3];
      return t;
    }
    return null;
  }

  function formatPercent(p, digits) {
    if (p === null || p === undefined || !isFinite(p)) return "–";
    return (100 * p).toFixed(digits === undefined ? 0 : digits) + "%";
  }

  /** A probability for people: whole percent, never a bare 0% or 100%. */
  function formatProbability(p) {
    if (p === null || p === undefined || !isFinite(p)) return "–";
    if (p < 0.005) return "<1%";
    if (p >= 0.995) return ">99%";
    return Math.round(100 * p) + "%";
  }

  function formatLogodds(x) {
    var s = Math.abs(x).toFixed(2);
    return (x > 0 ? "+" : x < 0 ? "−" : "±") + s;
  }

  function cleanMessage(msg) {
    return String(msg || "invalid value").replace(/^Value error, /, "").replace(/^Assertion failed, /, "");
  }

  // ---------------------------------------------------------------- DOM helpers

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "className") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function option(value, text) {
    var o = document.createElement("option");
    o.value = value;
    o.textContent = text === undefined ? value : text;
    return o;
  }

  // ---------------------------------------------------------------- server calls

  function authHeaders(extra) {
    var headers = extra || {};
    var token = $("token").value.trim();
    if (token) headers.Authorization = "Bearer " + token;
    return headers;
  }

  function fetchJson(url, init) {
    return fetch(url, init).then(function (resp) {
      return resp.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        return { status: resp.status, ok: resp.ok, body: body, text: text };
      });
    });
  }

  function describeHttpFailure(res) {
    if (res.status === 401 || res.status === 403) {
      return "The server refused the request (HTTP " + res.status + "): enter a valid bearer " +
        "token under “Server access token”.";
    }
    var detail = res.body && res.body.detail;
    if (typeof detail === "string") return detail + " (HTTP " + res.status + ")";
    return "The server could not answer (HTTP " + res.status + "). Nothing you entered was lost.";
  }

  /** The form's lists of fields from the cohort contract (GET v1/contract). */
  function applyContract(contract) {
    function table(name) {
      return contract.tables.filter(function (t) { return t.name === name; })[0];
    }
    function onForm(c) { return !!document.getElementById(c.name); }
    var patients = table("patients").columns;
    PATIENT_KINDS = {};
    patients.forEach(function (c) { PATIENT_KINDS[c.name] = c.kind; });
    TRISTATE = patients.filter(function (c) { return c.kind === "boolean"; }).map(function (c) { return c.name; });
    PATIENT_FIELDS = patients.filter(onForm).map(function (c) { return c.name; });
    EPISODE_FIELDS = table("episodes").columns
      .filter(function (c) { return onForm(c) && !PATIENT_KINDS[c.name]; })
      .map(function (c) { return c.name; });
    CLINICAL = ["ecog", "subtype", "race"].concat(TRISTATE);
  }

  /** The contract, then the tests, units and drugs: the form is usable once both arrived. */
  function loadOptions() {
    return fetchJson("v1/contract", { headers: authHeaders() }).then(function (contract) {
      if (!contract.ok) return contract;
      applyContract(contract.body);
      return fetchJson("ui/options", { headers: authHeaders() });
    }).then(function (res) {
      if (!res.ok) {
        showSummary([{ text: "Could not load the form's fields, tests and drugs: " + describeHttpFailure(res),
                       target: res.status === 401 || res.status === 403 ? $("token") : null }]);
        if (res.status === 401 || res.status === 403) { $("access-panel").hidden = false; $("access-panel").open = true; }
        return;
      }
      state.options = res.body;
      state.outcome = res.body.outcome || null;
      renderModelLine();
      // The server answered without a typed token (none needed, or the sign-in cookie is set).
      $("access-panel").hidden = !$("token").value.trim();
      state.analytes = {};
      state.loincToAlias = {};
      res.body.analytes.forEach(function (a) {
        state.analytes[a.alias] = a;
        (a.loinc || []).forEach(function (code) { state.loincToAlias[code] = a.alias; });
      });
      state.featureInfo = res.body.features || {};
      var list = $("drug-options");
      list.textContent = "";
      res.body.drugs.forEach(function (d) { list.appendChild(option(d)); });
      // Rows created before the options arrived get their selects filled now, keeping values.
      document.querySelectorAll("#labs-body .lab-row").forEach(function (row) {
        var test = row.querySelector('[data-field="test"]');
        var unit = row.querySelector('[data-field="unit"]');
        fillTestSelect(test, test.dataset.pending || test.value);
        fillUnitSelect(unit, test.value, unit.dataset.pending || unit.value);
      });
      if (!document.querySelector("#labs-body .lab-row")) addLabRow({ test: "PLT" });
      if (!document.querySelector("#regimens-body .regimen-row")) addRegimenRow({});
    }).catch(function () {
      showSummary([{ text: "Could not reach the server to load the list of tests and drugs." }]);
    });
  }

  function loadModelInfo() {
    return fetchJson("v1/model", { headers: authHeaders() }).then(function (res) {
      var line = $("model-line");
      if (!res.ok || !res.body) {
        state.calibration = null;
        line.textContent = "Model: information unavailable (HTTP " + res.status + ")";
        return;
      }
      var m = res.body.model || res.body;
      state.calibration = calibrationMap(m.calibration_curve);
      state.modelInfo = m;
      renderModelLine();
    }).catch(function () {
      state.calibration = null;
      $("model-line").textContent = "Model: server unreachable";
    });
  }

  function renderModelLine() {
    var m = state.modelInfo;
    if (!m) return;
    var parts = ["Model: " + (m.name || "unnamed")];
    if (m.version !== undefined && m.version !== null) parts.push("version " + m.version);
    if (m.label_definition) parts.push("response: " + outcomeText(m));
    $("model-line").textContent = parts.join(" · ");
  }

  function labelText(def) {
    if (!def) return "";
    if (typeof def === "string") return def;
    return def.name || JSON.stringify(def);
  }

  // ---------------------------------------------------------------- rows

  function analyteLabel(a) {
    return a.name ? a.alias + " · " + a.name : a.alias;
  }

  function fillTestSelect(select, value) {
    select.textContent = "";
    select.appendChild(option("", "Choose a test"));
    if (!state.options) {
      if (value) { select.appendChild(option(value)); select.dataset.pending = value; }
      select.value = value || "";
      return;
    }
    delete select.dataset.pending;
    state.options.analytes.forEach(function (a) { select.appendChild(option(a.alias, analyteLabel(a))); });
    var alias = state.loincToAlias[value] || value;
    if (alias && !state.analytes[alias]) {
      // A test outside the table is kept under its own code, as the cohort contract says.
      select.appendChild(option(alias, alias + " (other test, kept as given)"));
    }
    select.value = alias || "";
  }

  function fillUnitSelect(select, alias, value) {
    select.textContent = "";
    var a = state.analytes[alias];
    if (!state.options || !a) {
      if (!alias) select.appendChild(option("", "Choose a test first"));
      if (value) select.appendChild(option(value));
      if (!state.options && value) select.dataset.pending = value;
      select.value = value || "";
      return;
    }
    delete select.dataset.pending;
    a.units.forEach(function (u) { select.appendChild(option(u)); });
    if (value && a.units.indexOf(value) < 0) {
      // Keep what the file or person gave; the server reports it if it cannot convert it.
      select.appendChild(option(value, value + " (not an accepted unit)"));
    }
    select.value = value || a.canonical_unit || a.units[0];
  }

  function nextId(prefix) {
    state.uid += 1;
    return prefix + "-" + state.uid;
  }

  function wireLabels(root, ids) {
    root.querySelectorAll("[data-field]").forEach(function (input) {
      var id = ids + "-" + input.dataset.field;
      input.id = id;
      input.name = id;
    });
    root.querySelectorAll("[data-error]").forEach(function (span) {
      var field = span.dataset.error === "time" ? "date" : span.dataset.error;
      span.id = ids + "-" + field + "-error";
    });
    root.querySelectorAll("label[data-for]").forEach(function (label) {
      label.htmlFor = ids + "-" + label.dataset.for;
    });
  }

  function addLabRow(values) {
    var v = values || {};
    var row = $("lab-row-template").content.firstElementChild.cloneNode(true);
    var ids = nextId("lab");
    row.dataset.rowId = ids;
    wireLabels(row, ids);
    var test = row.querySelector('[data-field="test"]');
    var unit = row.querySelector('[data-field="unit"]');
    fillTestSelect(test, v.test || "");
    fillUnitSelect(unit, test.value, v.unit || "");
    row.querySelector('[data-field="value"]').value = v.value === undefined || v.value === null ? "" : String(v.value);
    var dt = splitDateTime(v.time);
    row.querySelector('[data-field="date"]').value = dt.date;
    row.querySelector('[data-field="clock"]').value = dt.time;
    test.addEventListener("change", function () { fillUnitSelect(unit, test.value, ""); });
    row.querySelector('[data-action="remove-lab"]').addEventListener("click", function () {
      removeRow(row, $("add-lab"));
    });
    $("labs-body").appendChild(row);
    renumber();
    return row;
  }

  function addDrug(regimenRow, name) {
    var item = $("drug-template").content.firstElementChild.cloneNode(true);
    wireLabels(item, nextId("drug"));
    item.querySelector("input").value = name || "";
    item.querySelector('[data-action="remove-drug"]').addEventListener("click", function () {
      var list = item.parentNode;
      var next = item.nextElementSibling || item.previousElementSibling;
      list.removeChild(item);
      if (!list.children.length) addDrug(regimenRow, "");
      renumber();
      (next ? next.querySelector("input") : list.querySelector("input")).focus();
    });
    regimenRow.querySelector('[data-list="drugs"]').appendChild(item);
    return item;
  }

  function addRegimenRow(values) {
    var v = values || {};
    var row = $("regimen-row-template").content.firstElementChild.cloneNode(true);
    var ids = nextId("reg");
    row.dataset.rowId = ids;
    wireLabels(row, ids);
    row.querySelector('[data-error="drugs"]').id = ids + "-drugs-error";
    var drugs = v.drugs;
    if (typeof drugs === "string") drugs = drugs.split(/[;+]/);
    drugs = (drugs || []).map(function (d) { return String(d).trim(); }).filter(Boolean);
    if (!drugs.length) drugs = [""];
    drugs.forEach(function (d) { addDrug(row, d); });
    ["start_date", "end_date"].forEach(function (f) {
      row.querySelector('[data-field="' + f + '"]').value = splitDateTime(v[f]).date;
    });
    ["regimen", "line", "cycle"].forEach(function (f) {
      var x = v[f];
      row.querySelector('[data-field="' + f + '"]').value = x === undefined || x === null ? "" : String(x);
    });
    row.querySelector('[data-action="add-drug"]').addEventListener("click", function () {
      var item = addDrug(row, "");
      renumber();
      item.querySelector("input").focus();
    });
    row.querySelector('[data-action="remove-regimen"]').addEventListener("click", function () {
      removeRow(row, $("add-regimen"));
    });
    $("regimens-body").appendChild(row);
    renumber();
    return row;
  }

  function removeRow(row, fallbackFocus) {
    var next = row.nextElementSibling || row.previousElementSibling;
    row.parentNode.removeChild(row);
    renumber();
    var target = next && next.querySelector("select, input");
    (target || fallbackFocus).focus();
  }

  /** Give every generated field a label naming its row, as the row order changes. */
  function renumber() {
    var names = { test: "Test", value: "Value", unit: "Unit", date: "Date", clock: "Time (optional)" };
    document.querySelectorAll("#labs-body .lab-row").forEach(function (row, i) {
      var n = i + 1;
      row.querySelectorAll("label[data-for]").forEach(function (label) {
        label.textContent = names[label.dataset.for];
        label.appendChild(el("span", { className: "visually-hidden", text: ", lab row " + n }));
      });
      row.querySelector('[data-action="remove-lab"]').setAttribute("aria-label", "Remove lab row " + n);
    });
    document.querySelectorAll("#regimens-body .regimen-row").forEach(function (row, i) {
      var n = i + 1;
      row.querySelector(".regimen-legend").textContent = "Regimen " + n;
      row.querySelectorAll(".drug-item").forEach(function (item, j) {
        var label = item.querySelector("label");
        label.textContent = "";
        label.appendChild(document.createTextNode("Drug " + (j + 1)));
        label.appendChild(el("span", { className: "visually-hidden", text: " of regimen " + n }));
        item.querySelector('[data-action="remove-drug"]').setAttribute(
          "aria-label", "Remove drug " + (j + 1) + " of regimen " + n);
      });
      row.querySelector('[data-action="add-drug"]').setAttribute("aria-label", "Add another drug to regimen " + n);
      row.querySelector('[data-action="remove-regimen"]').setAttribute("aria-label", "Remove regimen " + n);
      var count = row.querySelectorAll(".drug-item").length;
      row.querySelector('[data-action="add-drug"]').hidden = count >= 6;
    });
  }

  function splitDateTime(value) {
    if (!value) return { date: "", time: "" };
    var s = String(value);
    var m = /^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}))?/.exec(s);
    if (!m) return { date: "", time: "" };
    return { date: m[1], time: m[2] && m[2] !== "00:00" ? m[2] : "" };
  }

  // ---------------------------------------------------------------- errors

  function errorSpanFor(input) {
    return input ? $(input.id + "-error") : null;
  }

  function setFieldError(input, message, span) {
    var target = span || errorSpanFor(input);
    var section = input && input.closest ? input.closest("details") : null;
    if (section) section.open = true;
    if (input) {
      input.setAttribute("aria-invalid", "true");
      var described = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
      if (target && described.indexOf(target.id) < 0) described.push(target.id);
      if (described.length) input.setAttribute("aria-describedby", described.join(" "));
    }
    if (target) {
      target.textContent = target.hidden || !target.textContent ? message : target.textContent + "; " + message;
      target.hidden = false;
    }
  }

  function clearFieldError(input) {
    input.removeAttribute("aria-invalid");
    var span = errorSpanFor(input);
    if (span) { span.hidden = true; span.textContent = ""; }
  }

  function clearErrors() {
    document.querySelectorAll("[aria-invalid]").forEach(function (n) { n.removeAttribute("aria-invalid"); });
    document.querySelectorAll(".field-error").forEach(function (n) { n.hidden = true; n.textContent = ""; });
    $("error-summary").hidden = true;
    $("error-list").textContent = "";
  }

  /** items: [{text, target (element to focus) }]. */
  function showSummary(items) {
    var list = $("error-list");
    list.textContent = "";
    items.forEach(function (item) {
      var li = document.createElement("li");
      if (item.target && item.target.id) {
        var a = el("a", { href: "#" + item.target.id, text: item.text });
        a.addEventListener("click", function (ev) {
          ev.preventDefault();
          var details = item.target.closest("details");
          if (details) details.open = true;
          item.target.focus();
        });
        li.appendChild(a);
      } else {
        li.textContent = item.text;
      }
      list.appendChild(li);
    });
    $("error-summary").hidden = false;
    $("error-summary").focus();
  }

  // ---------------------------------------------------------------- reading the form

  function val(id) { return $(id).value.trim(); }

  function fieldName(input) {
    var label = input.labels && input.labels[0];
    return label ? label.textContent.replace(/\s+/g, " ").trim() : input.id;
  }

  /** Build the scoring request. Returns {body, errors:[{input, message, span}], labRows, regimenRows}. */
  function collectForm() {
    var errors = [];
    function fail(input, message, span) { errors.push({ input: input, message: message, span: span }); }

    var patient = Object.assign({}, state.extras.patient);
    var episode = Object.assign({}, state.extras.episode);
    patient.patient_id = val("patient_id") || "form-patient";
    episode.episode_id = val("episode_id") || "form-episode";

    var index = val("index_date");
    if (!index) fail($("index_date"), "Enter the index date (the first hetrombopag dose).");
    else episode.index_date = index;

    ["dose_mg", "age_years"].forEach(function (id) {
      var raw = val(id);
      if (!raw) { delete episode[id]; return; }
      var x = parseNumber(raw);
      if (isNaN(x)) fail($(id), "Enter a number, for example 7.5.");
      else if (x <= 0) fail($(id), "Enter a number greater than 0.");
      else episode[id] = x;
    });

    PATIENT_FIELDS.forEach(function (id) {
      if (id === "patient_id") return;
      var raw = val(id);
      var kind = PATIENT_KINDS[id];
      if (raw === "") delete patient[id];
      else if (kind === "boolean") {
        if (raw === "true") patient[id] = true;
        else if (raw === "false") patient[id] = false;
        else delete patient[id];
      } else if (kind === "integer" || kind === "number") patient[id] = Number(raw);
      else patient[id] = raw;
    });
    if (index && patient.birth_date && patient.birth_date > index) {
      fail($("birth_date"), "The birth date is after the index date.");
    }

    var labs = [];
    var labRows = [];
    document.querySelectorAll("#labs-body .lab-row").forEach(function (row) {
      var f = function (name) { return row.querySelector('[data-field="' + name + '"]'); };
      var raw = { test: f("test").value, value: f("value").value.trim(), date: f("date").value,
                  clock: f("clock").value };
      if (!raw.value && !raw.date && !raw.clock) return;  // an untouched row is not a result
      var ok = true;
      if (!raw.test) { fail(f("test"), "Choose the test."); ok = false; }
      var x = parseNumber(raw.value);
      if (!raw.value) { fail(f("value"), "Enter the result."); ok = false; }
      else if (isNaN(x)) { fail(f("value"), "Enter a number, for example 42 or 4.2."); ok = false; }
      if (!f("unit").value) { fail(f("unit"), "Choose the unit."); ok = false; }
      if (!raw.date) { fail(f("date"), "Enter the date of the result."); ok = false; }
      if (!ok) return;
      labs.push({ time: raw.clock ? raw.date + "T" + raw.clock + ":00" : raw.date, test: raw.test,
                  value: x, unit: f("unit").value });
      labRows.push(row);
    });

    var regimens = [];
    var regimenRows = [];
    document.querySelectorAll("#regimens-body .regimen-row").forEach(function (row) {
      var f = function (name) { return row.querySelector('[data-field="' + name + '"]'); };
      var drugInputs = Array.prototype.slice.call(row.querySelectorAll('[data-field="drug"]'));
      var drugs = drugInputs.map(function (i) { return i.value.trim(); }).filter(Boolean);
      var filled = drugs.length || ["start_date", "end_date", "regimen", "line", "cycle"].some(function (n) {
        return f(n).value.trim() !== "";
      });
      if (!filled) return;
      var ok = true;
      var item = { drugs: drugs };
      if (!drugs.length) { fail(drugInputs[0], "Enter at least one drug."); ok = false; }
      if (!f("start_date").value) { fail(f("start_date"), "Enter the start date."); ok = false; }
      else item.start_date = f("start_date").value;
      if (f("end_date").value) {
        item.end_date = f("end_date").value;
        if (item.start_date && item.end_date < item.start_date) {
          fail(f("end_date"), "The end date is before the start date."); ok = false;
        }
      }
      if (f("regimen").value.trim()) item.regimen = f("regimen").value.trim();
      ["line", "cycle"].forEach(function (n) {
        var raw = f(n).value.trim();
        if (!raw) return;
        var x = parseNumber(raw);
        if (isNaN(x) || x < 1 || Math.floor(x) !== x) {
          fail(f(n), "Enter a whole number from 1."); ok = false;
        } else item[n] = x;
      });
      if (!ok) return;
      regimens.push(item);
      regimenRows.push(row);
    });

    return {
      body: { patient: patient, episode: episode, labs: labs, regimens: regimens },
      errors: errors, labRows: labRows, regimenRows: regimenRows
    };
  }

  /** The input a server error points at, or null. */
  function inputForTarget(t, sent) {
    if (!t) return null;
    if (t.section === "patient" || t.section === "episode") {
      if (!t.field) return null;
      if (t.field === "patient_id" || t.field === "episode_id" || PATIENT_FIELDS.indexOf(t.field) >= 0 ||
          EPISODE_FIELDS.indexOf(t.field) >= 0) {
        return $(t.field);
      }
      return null;
    }
    var rows = t.section === "labs" ? sent.labRows : sent.regimenRows;
    var row = t.index === undefined ? null : rows[t.index];
    if (!row) return null;
    var field = t.field;
    if (t.section === "labs") {
      if (field === "time") field = "date";
      return row.querySelector('[data-field="' + field + '"]') || row.querySelector('[data-field="value"]');
    }
    if (field === "drugs") {
      var drugInputs = Array.prototype.slice.call(row.querySelectorAll('[data-field="drug"]'))
        .filter(function (i) { return i.value.trim(); });
      return drugInputs[t.sub || 0] || row.querySelector('[data-field="drug"]');
    }
    return row.querySelector('[data-field="' + field + '"]') || row.querySelector('[data-field="start_date"]');
  }

  function describeLoc(loc) {
    var path = (loc || []).filter(function (p) { return p !== "body"; });
    return path.map(function (p) { return typeof p === "number" ? "row " + (p + 1) : p; }).join(" › ");
  }

  function showServerErrors(detail, sent) {
    var items = [];
    (Array.isArray(detail) ? detail : [{ msg: String(detail) }]).forEach(function (d) {
      var input = inputForTarget(locToTarget(d.loc), sent);
      var message = cleanMessage(d.msg);
      if (d.given !== undefined && d.given !== null) message += " (the file has “" + d.given + "”)";
      if (input) {
        setFieldError(input, message);
        items.push({ text: fieldName(input) + ": " + message, target: input });
      } else {
        var where = describeLoc(d.loc);
        items.push({ text: (where ? where + ": " : "") + message });
      }
    });
    showSummary(items);
  }

  // ---------------------------------------------------------------- filling the form

  function setSelect(id, value) {
    var select = $(id);
    var v = value === undefined || value === null ? "" : String(value);
    if (TRISTATE.indexOf(id) >= 0) {
      var s = v.toLowerCase();
      v = s === "true" || s === "1" || s === "yes" ? "true" : s === "false" || s === "0" || s === "no" ? "false" : "";
    }
    if (v && !Array.prototype.some.call(select.options, function (o) { return o.value === v; })) {
      select.appendChild(option(v, v + " (from file)"));
    }
    select.value = v;
  }

  function clearForm() {
    clearErrors();
    $("score-form").reset();
    $("labs-body").textContent = "";
    $("regimens-body").textContent = "";
    state.extras = { patient: {}, episode: {} };
  }

  function fillForm(record) {
    clearForm();
    var patient = record.patient || {};
    var episode = record.episode || {};
    PATIENT_FIELDS.forEach(function (k) {
      var v = patient[k];
      if (v === undefined || v === null) return;
      if ($(k).tagName === "SELECT") setSelect(k, v);
      else $(k).value = k === "birth_date" ? splitDateTime(v).date : String(v);
    });
    EPISODE_FIELDS.forEach(function (k) {
      var v = episode[k];
      if (v === undefined || v === null) return;
      $(k).value = k === "index_date" ? splitDateTime(v).date : String(v);
    });
    Object.keys(patient).forEach(function (k) {
      if (PATIENT_FIELDS.indexOf(k) < 0) state.extras.patient[k] = patient[k];
    });
    Object.keys(episode).forEach(function (k) {
      if (EPISODE_FIELDS.indexOf(k) < 0 && k !== "patient_id") state.extras.episode[k] = episode[k];
    });
    (record.labs || []).forEach(function (lab) { addLabRow(lab); });
    (record.regimens || []).forEach(function (r) { addRegimenRow(r); });
    if (!(record.labs || []).length) addLabRow({ test: "PLT" });
    if (!(record.regimens || []).length) addRegimenRow({});
    updateSectionNotes();
    markStale();
  }

  /** The collapsed "Clinical findings" section says how many of its fields are filled. */
  function updateSectionNotes() {
    var n = CLINICAL.filter(function (id) { return $(id).value.trim() !== ""; }).length;
    $("clinical-note").textContent = "optional · " + (n ? n + " of " + CLINICAL.length + " given" : "none given");
  }

  function loadExamples() {
    return fetchJson("ui/examples", { headers: authHeaders() }).then(function (res) {
      var select = $("example-choice");
      select.textContent = "";
      if (!res.ok || !Array.isArray(res.body)) {
        select.appendChild(option("", "No examples available"));
        $("example-load").disabled = true;
        return;
      }
      res.body.forEach(function (e) { select.appendChild(option(e.name, e.title)); });
      $("example-load").disabled = !res.body.length;
    }).catch(function () { /* the page works without examples */ });
  }

  function loadExample() {
    var name = $("example-choice").value;
    if (!name) return;
    var title = $("example-choice").selectedOptions[0].textContent;
    fetchJson("ui/examples/" + encodeURIComponent(name), { headers: authHeaders() }).then(function (res) {
      if (!res.ok || !res.body) {
        $("file-status").textContent = "The example could not be loaded (HTTP " + res.status + ").";
        return;
      }
      fillForm(res.body);
      $("file-status").textContent = "Loaded " + title + ". Press “Estimate response probability” to score it.";
    });
  }

  function recordTitle(r) {
    var p = r.patient || {};
    var e = r.episode || {};
    return [p.patient_id, e.episode_id, e.index_date].filter(Boolean).join(" · ") || "record";
  }

  /** Fill the form with one episode of the loaded file and mark the problems found in it. */
  function showFileRecord(i) {
    var entry = state.fileRecords[i];
    fillForm(entry.record);
    if (entry.problems && entry.problems.length) {
      showServerErrors(entry.problems, {
        labRows: Array.prototype.slice.call(document.querySelectorAll("#labs-body .lab-row")),
        regimenRows: Array.prototype.slice.call(document.querySelectorAll("#regimens-body .regimen-row"))
      });
    }
  }

  function onFileChosen() {
    var input = $("patient-file");
    clearFieldError(input);
    $("file-status").textContent = "";
    var file = input.files && input.files[0];
    if (!file) return;
    file.text().then(function (text) {
      var parsed;
      try { parsed = JSON.parse(text); } catch (e) {
        setFieldError(input, "“" + file.name + "” is not valid JSON (" + e.message + ").");
        return null;
      }
      $("file-status").textContent = "Reading “" + file.name + "”…";
      var index = $("index_date").value;
      return fetchJson("ui/parse-file" + (index ? "?index_date=" + encodeURIComponent(index) : ""), {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify(parsed)
      }).then(function (res) {
        $("file-status").textContent = "";
        if (!res.ok) {
          var detail = res.body && res.body.detail;
          var msg = Array.isArray(detail)
            ? detail.map(function (d) { return (describeLoc(d.loc) ? describeLoc(d.loc) + ": " : "") + cleanMessage(d.msg); }).join("; ")
            : describeHttpFailure(res);
          setFieldError(input, "“" + file.name + "” could not be read: " + msg);
          return;
        }
        state.fileRecords = res.body.records;
        var select = $("file-record");
        select.textContent = "";
        state.fileRecords.forEach(function (r, i) { select.appendChild(option(String(i), recordTitle(r.record))); });
        $("file-record-field").hidden = state.fileRecords.length < 2;
        var note = "Loaded " + recordTitle(state.fileRecords[0].record) + " from “" + file.name + "”" +
          (state.fileRecords.length > 1 ? " (" + state.fileRecords.length + " episodes in the file; choose one above)" : "") + ".";
        if ((res.body.warnings || []).length) note += " Notes: " + res.body.warnings.join("; ");
        $("file-status").textContent = note;
        showFileRecord(0);
      });
    }).catch(function () {
      setFieldError(input, "The file could not be read or the server could not be reached.");
    });
  }

  // ---------------------------------------------------------------- result

  /** A feature's plain clinical name and unit (features.registry, through ui/options). */
  function featureInfo(name) {
    var info = state.featureInfo[name];
    if (info) return info;
    var found = null;
    Object.keys(state.featureInfo).some(function (pattern) {
      if (pattern.indexOf("*") < 0) return false;
      var re = new RegExp("^" + pattern.split("*").map(function (part) {
        return part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      }).join("(.*)") + "$");
      if (!re.test(name)) return false;
      found = Object.assign({}, state.featureInfo[pattern], { label: String(name).replace(/_/g, " ") });
      return true;
    });
    return found || { label: String(name).replace(/_/g, " "), unit: "", unit_text: "", missing: "not recorded" };
  }

  function featureLabel(name) {
    return featureInfo(name).label || String(name).replace(/_/g, " ");
  }

  function formatValue(value) {
    var x = Number(value);
    if (Math.abs(x) >= 100 || Math.floor(x) === x) return x.toFixed(0);
    if (Math.abs(x) >= 10) return x.toFixed(1);
    return String(Math.round(x * 100) / 100);
  }

  /** A chart label: the feature's full clinical name and, when known, its value with its unit. */
  function shortLabel(name, value) {
    var info = featureInfo(name);
    var text = info.label || String(name);
    if (value === null) return text + ": " + (info.missing || "not recorded");
    if (value !== undefined && isFinite(value)) {
      if (info.unit === "0/1" || String(name).indexOf("=") >= 0) text += ": " + (Number(value) >= 0.5 ? "yes" : "no");
      else text += ": " + formatValue(value) + (info.unit_text ? " " + info.unit_text : "");
    }
    return text;
  }

  function factorText(f) {
    if (typeof f === "string") return f;
    if (!f) return "";
    return f.text || f.description || f.label || f.feature || JSON.stringify(f);
  }

  /** Split a label into lines of at most `width` characters, at spaces. */
  function wrapText(text, width) {
    var words = String(text).split(" ");
    var lines = [];
    var line = "";
    words.forEach(function (w) {
      if (line && (line + " " + w).length > width) { lines.push(line); line = w; }
      else line = line ? line + " " + w : w;
    });
    if (line) lines.push(line);
    return lines;
  }

  /** The labels of the first and last rows: calibrated, or the uncalibrated fallback. */
  function totalLabels(wf) {
    return wf.calibrated
      ? { base: "Average patient (calibrated baseline)", final: "This patient (calibrated probability)" }
      : { base: "Average patient (model baseline, uncalibrated)", final: "This patient (model output, uncalibrated)" };
  }

  /**
   * The waterfall as an SVG drawn at the width it is shown (1 unit = 1 CSS pixel, so text keeps
   * its size on a phone). Wide: labels in a left column, wrapped, never cut. Narrow: each label
   * above its bar. Log-odds are drawn only when `showLogodds`.
   */
  function drawWaterfall(wf, stepLabels, width, showLogodds) {
    var names = totalLabels(wf);
    var W = Math.max(280, Math.min(720, Math.floor(width || 560)));
    var stacked = W < 520;
    var lineH = 15;
    var right = showLogodds ? 58 : 8;
    var left = stacked ? 14 : Math.round(W * 0.44);
    var valueRoom = 40;  // the percentage written after a total bar
    var plotW = W - left - right - valueRoom;
    var chars = Math.max(16, Math.floor((stacked ? W - 16 : left - 14) / 7));
    var top = 22;
    var rows = [{ label: names.base, kind: "total", start: 0, end: wf.base.p, logodds: wf.base.logodds, total: true }]
      .concat(wf.steps.map(function (s, i) {
        return { label: stepLabels[i], kind: s.logodds >= 0 ? "raise" : "lower", start: s.start, end: s.end,
                 logodds: s.logodds };
      }))
      .concat([{ label: names.final, kind: "total", start: 0, end: wf.final.p, logodds: wf.final.logodds, total: true }]);
    var y = top;
    rows.forEach(function (r) {
      r.lines = wrapText(r.label, chars);
      r.y = y;
      r.barY = stacked ? y + r.lines.length * lineH + 2 : y + Math.max(0, (r.lines.length - 1) * lineH / 2) + 4;
      r.h = stacked ? r.lines.length * lineH + 22 : Math.max(26, r.lines.length * lineH + 8);
      y += r.h;
    });
    var bottom = y;
    var height = bottom + 44;
    var x = function (p) { return left + p * plotW; };
    var root = svg("svg", { viewBox: "0 0 " + W + " " + height, width: W, height: height,
                            class: "waterfall" + (stacked ? " stacked" : ""), role: "img",
                            "aria-labelledby": "wf-title wf-desc", id: "waterfall",
                            "data-scale": wf.calibrated ? "calibrated" : "logistic",
                            "data-base-probability": wf.base.p, "data-final-probability": wf.final.p });
    root.appendChild(svg("title", { id: "wf-title" }, "Waterfall of the factors behind this prediction, " +
      (wf.calibrated ? "calibrated probability scale" : "uncalibrated probability scale")));
    root.appendChild(svg("desc", { id: "wf-desc" }, wf.calibrated
      ? "From the calibrated baseline of " + formatPercent(wf.base.p, 1) + " to this patient's calibrated " +
        "probability of " + formatPercent(wf.final.p, 1) + ". The same data are in the table below the chart."
      : "From the uncalibrated model baseline of " + formatPercent(wf.base.p, 1) + " to this patient's " +
        "uncalibrated model output of " + formatPercent(wf.final.p, 1) + ". The same data are in the table below the chart."));
    if (showLogodds) {
      root.appendChild(svg("text", { x: W - 4, y: 13, "text-anchor": "end", class: "axis-title" }, "log-odds"));
    }
    [0, 0.25, 0.5, 0.75, 1].forEach(function (t) {
      root.appendChild(svg("line", { class: "grid-line", x1: x(t), x2: x(t), y1: top, y2: bottom }));
    });
    rows.forEach(function (r, i) {
      var barH = stacked ? 14 : 16;
      var g = svg("g", { class: "wf-row", "data-kind": r.kind, "data-start": r.start, "data-end": r.end });
      g.appendChild(svg("title", {}, r.label + ": " + formatPercent(r.start, 1) + " → " + formatPercent(r.end, 1) +
        " (log-odds " + formatLogodds(r.logodds) + ")"));
      var label = svg("text", stacked
        ? { x: left, y: r.y + 12, "text-anchor": "start", class: "wf-label" }
        : { x: left - 8, y: r.barY + barH / 2 + 4 - (r.lines.length - 1) * lineH / 2, "text-anchor": "end", class: "wf-label" });
      r.lines.forEach(function (line, k) {
        label.appendChild(svg("tspan", { x: stacked ? left : left - 8, dy: k === 0 ? 0 : lineH }, line));
      });
      g.appendChild(label);
      var x0 = x(Math.min(r.start, r.end));
      var w = Math.max(Math.abs(x(r.end) - x(r.start)), 1.5);
      g.appendChild(svg("rect", { x: x0, y: r.barY, width: w, height: barH,
                                  class: r.total ? "bar-total" : "bar-" + r.kind }));
      if (!r.total && i + 1 < rows.length) {
        g.appendChild(svg("line", { class: "connector", x1: x(r.end), x2: x(r.end), y1: r.barY + barH,
                                    y2: rows[i + 1].barY }));
      }
      if (r.total) {
        g.appendChild(svg("text", { x: x(r.end) + 4, y: r.barY + barH / 2 + 4, class: "wf-value" }, formatProbability(r.end)));
      }
      if (showLogodds) {
        g.appendChild(svg("text", { x: W - 4, y: r.barY + barH / 2 + 4, "text-anchor": "end", class: "logodds" },
          formatLogodds(r.logodds)));
      }
      root.appendChild(g);
    });
    var axis = svg("g", { class: "axis" });
    axis.appendChild(svg("line", { x1: x(0), x2: x(1), y1: bottom, y2: bottom }));
    [0, 0.25, 0.5, 0.75, 1].forEach(function (t) {
      axis.appendChild(svg("line", { x1: x(t), x2: x(t), y1: bottom, y2: bottom + 4 }));
      axis.appendChild(svg("text", { x: x(t), y: bottom + 16, "text-anchor": "middle" }, formatPercent(t)));
    });
    axis.appendChild(svg("text", { x: x(0.5), y: bottom + 34, "text-anchor": "middle", class: "axis-title" },
      wf.calibrated ? "Calibrated probability of response" : "Uncalibrated probability of response"));
    root.appendChild(axis);
    return root;
  }

  function chartTable(wf, stepLabels, showLogodds) {
    var table = el("table", { className: "chart-table" });
    var head = [el("th", { scope: "col", text: "Factor" })];
    if (showLogodds) head.push(el("th", { scope: "col", text: "Log-odds" }));
    head.push(el("th", { scope: "col", text: "Probability before → after" }));
    table.appendChild(el("thead", {}, [el("tr", {}, head)]));
    var body = el("tbody");
    var add = function (label, lo, text) {
      var cells = [el("td", { text: label })];
      if (showLogodds) cells.push(el("td", { className: "num", text: formatLogodds(lo) }));
      cells.push(el("td", { className: "num", text: text }));
      body.appendChild(el("tr", {}, cells));
    };
    var names = totalLabels(wf);
    add(names.base, wf.base.logodds, formatPercent(wf.base.p, 1));
    wf.steps.forEach(function (s, i) {
      add(stepLabels[i], s.logodds, formatPercent(s.start, 1) + " → " + formatPercent(s.end, 1));
    });
    add(names.final, wf.final.logodds, formatPercent(wf.final.p, 1));
    table.appendChild(body);
    return table;
  }

  function bandText(band) {
    if (!band) return "No risk band";
    var b = String(band);
    return b.charAt(0).toUpperCase() + b.slice(1) + " probability of response";
  }

  /** The outcome the probability is about, in words (the model's response definition). */
  function outcomeText(model) {
    var def = labelText(model.label_definition);
    if (state.outcome && state.outcome.label_definition === def) return state.outcome.words;
    return def ? "response by the definition “" + def + "”" : "response";
  }

  /** The interval level (0-1) of an answer: `interval_level` when given, else the fold models' 10th-90th. */
  function intervalLevel(answer) {
    var level = Number(answer.interval_level);
    return isFinite(level) && level > 0 && level < 1 ? level : null;
  }

  /** A bar from 0 to 100% with the interval drawn on it and the probability marked. */
  function intervalBar(answer) {
    var interval = answer.interval || [];
    var low = Number(interval[0]), high = Number(interval[1]), p = Number(answer.probability);
    var level = intervalLevel(answer);
    var levelText = level !== null ? Math.round(100 * level) + "% " : "80% ";
    var box = el("div", { className: "interval-box", id: "result-interval-box" });
    if (!(isFinite(low) && isFinite(high))) {
      box.appendChild(el("p", { className: "interval", id: "result-interval", text: "No uncertainty interval for this answer." }));
      return box;
    }
    var clamp = function (v) { return Math.max(0, Math.min(1, v)); };
    var track = el("div", { className: "interval-track", id: "interval-bar", role: "img",
      "aria-label": levelText + "interval from " + formatProbability(low) + " to " + formatProbability(high) +
        ", estimate " + formatProbability(p),
      "data-low": low, "data-high": high, "data-probability": p });
    var range = el("span", { className: "interval-range" });
    range.style.left = (100 * clamp(low)) + "%";
    range.style.width = Math.max(0.6, 100 * (clamp(high) - clamp(low))) + "%";
    var point = el("span", { className: "interval-point" });
    point.style.left = (100 * clamp(p)) + "%";
    track.appendChild(range);
    track.appendChild(point);
    box.appendChild(track);
    box.appendChild(el("div", { className: "interval-scale", "aria-hidden": "true" },
      [el("span", { text: "0%" }), el("span", { text: "50%" }), el("span", { text: "100%" })]));
    box.appendChild(el("p", { className: "interval", id: "result-interval",
      text: levelText + "uncertainty interval: " + formatProbability(low) + " to " + formatProbability(high) + "." }));
    box.appendChild(el("p", { className: "interval-meaning", id: "result-interval-meaning", text: level !== null
      ? "How sure the model is of this estimate: the " + levelText.trim() + " interval is the range it gives with " +
        Math.round(100 * level) + "% confidence. A wide bar means the estimate is uncertain; it is not the " +
        "spread of outcomes between patients."
      : "How sure the model is of this estimate: the models fitted in cross-validation give this patient " +
        "estimates whose middle 80% (10th to 90th percentile) lie in this range. A wide bar means the " +
        "estimate depends on the training data and is uncertain." }));
    return box;
  }

  /** "By day 7: 55%": the probability of response by each day, when the answer has it. */
  function responseByDay(answer) {
    var days = answer.response_by_day;
    if (!Array.isArray(days) || !days.length) return null;
    var ps = days.map(Number);
    if (ps.some(function (v) { return !isFinite(v); })) return null;
    var section = el("div", { className: "result-section", id: "result-by-day" }, [
      el("h3", { text: "When platelets respond" })]);
    var marks = [];
    [7, 14, 28].forEach(function (d) { if (d <= ps.length && marks.indexOf(d) < 0) marks.push(d); });
    if (marks.indexOf(ps.length) < 0) marks.push(ps.length);
    section.appendChild(el("p", { id: "result-by-day-summary", text: marks.map(function (d) {
      return "by day " + d + ": " + formatProbability(ps[d - 1]);
    }).join(" · ").replace(/^b/, "B") + "." }));
    var median = answer.median_days_to_response;
    if (median !== undefined && median !== null && isFinite(median)) {
      section.appendChild(el("p", { id: "result-median-days",
        text: "Among patients like this who respond, half respond by day " + Math.round(Number(median)) + "." }));
    }
    var W = 260, H = 90, padL = 34, padB = 20;
    var chart = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "by-day-curve",
                             role: "img", "aria-label": "Probability of response by day, days 1 to " + ps.length });
    var px = function (d) { return padL + (W - padL - 8) * (ps.length === 1 ? 1 : (d - 1) / (ps.length - 1)); };
    var py = function (p) { return 6 + (H - padB - 6) * (1 - p); };
    [0, 0.5, 1].forEach(function (t) {
      chart.appendChild(svg("line", { class: "grid-line", x1: padL, x2: W - 8, y1: py(t), y2: py(t) }));
      chart.appendChild(svg("text", { x: padL - 4, y: py(t) + 4, "text-anchor": "end" }, formatPercent(t)));
    });
    chart.appendChild(svg("polyline", { class: "curve", points: ps.map(function (p, i) {
      return px(i + 1).toFixed(1) + "," + py(p).toFixed(1);
    }).join(" ") }));
    chart.appendChild(svg("text", { x: px(1), y: H - 4 }, "day 1"));
    chart.appendChild(svg("text", { x: px(ps.length), y: H - 4, "text-anchor": "end" }, "day " + ps.length));
    section.appendChild(chart);
    var table = el("table", { className: "chart-table" }, [el("thead", {}, [el("tr", {}, [
      el("th", { scope: "col", text: "By day" }), el("th", { scope: "col", text: "Probability of response" })])])]);
    var body = el("tbody");
    ps.forEach(function (p, i) {
      body.appendChild(el("tr", {}, [el("td", { text: String(i + 1) }), el("td", { className: "num", text: formatProbability(p) })]));
    });
    table.appendChild(body);
    section.appendChild(el("details", {}, [el("summary", { text: "Every day as a table" }), table]));
    return section;
  }

  function chartWidth() {
    var holder = $("waterfall-holder");
    var w = holder ? holder.clientWidth : 0;
    if (!w) w = $("result").clientWidth - 32;
    return w;
  }

  /** (Re)draw the explanation chart, its note and its table, at the width available. */
  function drawExplanation(answer) {
    var holder = $("waterfall-holder");
    if (!holder) return;
    holder.textContent = "";
    var showLogodds = $("show-logodds") && $("show-logodds").checked;
    var calibrate = state.calibration;
    var wf = waterfallSteps(answer.base_value, answer.contributions || {}, MAX_FACTORS,
                            calibrate || sigmoid, calibrate ? answer.probability : null);
    wf.calibrated = Boolean(calibrate);
    var values = {};
    (answer.top_factors || []).forEach(function (f) { if (f && f.feature) values[f.feature] = f.value; });
    var stepLabels = wf.steps.map(function (s) {
      return s.kind === "other" ? "Other " + s.count + " factors combined" : shortLabel(s.name, values[s.name]);
    });
    holder.appendChild(drawWaterfall(wf, stepLabels, chartWidth(), showLogodds));
    var colours = "Blue bars raise and orange bars lower the chance of response.";
    var sums = showLogodds
      ? " The numbers at the right are SHAP contributions in log-odds, which add up exactly (baseline " +
        formatLogodds(wf.base.logodds) + " + contributions = margin " + formatLogodds(Number(answer.margin)) + ")."
      : "";
    holder.appendChild(el("p", { className: "chart-note", id: "chart-note", text: calibrate
      ? "Bars move from the calibrated baseline (" + formatPercent(wf.base.p, 1) + ", an average patient) to " +
        "this patient's calibrated probability (" + formatPercent(wf.final.p, 1) + ", the probability shown " +
        "above), one factor at a time. " + colours + sums
      : "The model's calibration could not be loaded (model information unavailable), so the bars use the " +
        "uncalibrated model output (the logistic of the log-odds): they end at " + formatPercent(wf.final.p, 1) +
        ", not at the calibrated probability shown above. " + colours + sums }));
    holder.appendChild(el("details", {}, [el("summary", { text: "Chart values as a table" }),
                                          chartTable(wf, stepLabels, showLogodds)]));
  }

  function renderResult(answer) {
    var box = $("result");
    box.textContent = "";
    box.classList.remove("stale");
    state.lastAnswer = answer;
    var model = answer.model || {};
    box.appendChild(el("p", { className: "stale-banner", id: "result-stale", role: "status", hidden: "hidden" }));
    box.appendChild(el("p", { className: "visually-hidden", text: "Result for episode " + answer.episode_id + "." }));
    box.appendChild(el("div", { className: "headline" }, [
      el("span", { className: "probability", id: "result-probability", text: formatProbability(answer.probability) }),
      el("span", { className: "band band-" + String(answer.band || "").toLowerCase(), id: "result-band",
                   text: bandText(answer.band) })
    ]));
    box.appendChild(el("p", { className: "outcome", id: "result-outcome",
      text: "Chance that " + outcomeText(model) + "." }));
    box.appendChild(intervalBar(answer));
    box.appendChild(el("p", { className: "episode-line", text: "Episode " + answer.episode_id + "." }));
    var byDay = responseByDay(answer);
    if (byDay) box.appendChild(byDay);

    var warnings = answer.warnings || [];
    if (warnings.length) {
      // The first few are shown; more are folded away so that the answer stays on screen.
      var shownCount = warnings.length > 4 ? 3 : warnings.length;
      var item = function (w) { return el("li", { text: typeof w === "string" ? w : w.message || factorText(w) }); };
      var ul = el("ul");
      warnings.slice(0, shownCount).forEach(function (w) { ul.appendChild(item(w)); });
      var parts = [el("h3", { text: "Warnings (" + warnings.length + ")" }), ul];
      if (warnings.length > shownCount) {
        var more = el("ul");
        warnings.slice(shownCount).forEach(function (w) { more.appendChild(item(w)); });
        parts.push(el("details", { id: "more-warnings" }, [
          el("summary", { text: "Show " + (warnings.length - shownCount) + " more warnings" }), more]));
      }
      box.appendChild(el("div", { className: "warnings", id: "result-warnings" }, parts));
    }

    var factors = answer.top_factors || [];
    if (factors.length) {
      var ol = el("ul", { className: "factors", id: "result-factors" });
      factors.forEach(function (f) {
        var kind = Number(f.contribution) >= 0 ? "raise" : "lower";
        ol.appendChild(el("li", { className: "factor-" + kind, text: factorText(f) }));
      });
      box.appendChild(el("div", { className: "result-section" }, [el("h3", { text: "Main factors" }), ol]));
    }

    if (answer.contributions) {
      var toggle = el("input", { type: "checkbox", id: "show-logodds" });
      toggle.checked = Boolean(state.showLogodds);
      toggle.addEventListener("change", function () {
        state.showLogodds = toggle.checked;
        drawExplanation(answer);
      });
      box.appendChild(el("div", { className: "result-section" }, [
        el("h3", { text: "Why: how each factor moves the probability" }),
        el("div", { id: "waterfall-holder" }),
        el("p", { className: "toggle" }, [toggle, el("label", { "for": "show-logodds",
          text: " Show SHAP values (log-odds) for reviewers" })])
      ]));
      drawExplanation(answer);
    }

    var dl = el("dl");
    var add = function (k, v) { dl.appendChild(el("dt", { text: k })); dl.appendChild(el("dd", { text: v })); };
    add("Model", (model.name || "unnamed") + (model.version !== undefined ? ", version " + model.version : ""));
    add("Response definition", labelText(model.label_definition) + ": " + outcomeText(model));
    var meta = el("div", { className: "model-meta result-section", id: "result-model" }, [el("h3", { text: "Model" }), dl]);
    meta.appendChild(el("p", {}, [el("a", { href: "v1/model", text: "Model card: metrics, training data and label definition" })]));
    box.appendChild(meta);
  }

  /** The form changed after a result: mark the result out of date (it no longer matches the form). */
  function markStale() {
    var box = $("result");
    if (!state.lastAnswer || box.classList.contains("stale") || !$("result-stale")) return;
    box.classList.add("stale");
    var banner = $("result-stale");
    banner.textContent = "Out of date: the form has changed since this result. Press “Estimate response " +
      "probability” to update it.";
    banner.hidden = false;
  }

  /** Take the result off the screen (the form failed validation or the request failed). */
  function clearResult(reason) {
    var box = $("result");
    box.textContent = "";
    box.classList.remove("stale");
    state.lastAnswer = null;
    box.appendChild(el("p", { className: "placeholder", id: "result-placeholder", text: reason }));
  }

  // ---------------------------------------------------------------- submit

  function onSubmit(ev) {
    ev.preventDefault();
    clearErrors();
    var sent = collectForm();
    if (sent.errors.length) {
      clearResult("No result: correct the problems listed at the top of the form, then estimate again.");
      sent.errors.forEach(function (e) { setFieldError(e.input, e.message, e.span); });
      showSummary(sent.errors.map(function (e) { return { text: fieldName(e.input) + ": " + e.message, target: e.input }; }));
      return;
    }
    var button = $("submit");
    button.disabled = true;
    button.textContent = "Estimating…";
    $("result").setAttribute("aria-busy", "true");
    state.lastSent = sent;
    fetchJson("v1/score", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "application/json" }),
      body: JSON.stringify(sent.body)
    }).then(function (res) {
      if (res.ok && res.body) {
        renderResult(res.body);
        $("result-heading").focus();
      } else if (res.status === 422 && res.body && res.body.detail) {
        clearResult("No result: correct the problems listed at the top of the form, then estimate again.");
        showServerErrors(res.body.detail, sent);
      } else {
        clearResult("No result: the server did not answer this request.");
        var target = res.status === 401 || res.status === 403 ? $("token") : null;
        if (target) { $("access-panel").hidden = false; $("access-panel").open = true; setFieldError(target, "A valid bearer token is required."); }
        showSummary([{ text: describeHttpFailure(res), target: target }]);
      }
    }).catch(function () {
      clearResult("No result: the server could not be reached.");
      showSummary([{ text: "Could not reach the server. Nothing you entered was lost; try again." }]);
    }).then(function () {
      button.disabled = false;
      button.textContent = "Estimate response probability";
      $("result").setAttribute("aria-busy", "false");
    });
  }

  // ---------------------------------------------------------------- start

  function showTokenState() {
    $("access-summary").textContent = "Server access token" +
      ($("token").value.trim() ? " (set for this browser tab)" : "");
  }

  function start() {
    document.querySelectorAll("select.tristate").forEach(function (s) {
      s.appendChild(option("", "Not recorded"));
      s.appendChild(option("true", "Yes"));
      s.appendChild(option("false", "No"));
    });
    var saved = null;
    try { saved = window.sessionStorage.getItem(TOKEN_KEY); } catch (e) { saved = null; }
    if (saved) $("token").value = saved;
    showTokenState();
    $("token-save").addEventListener("click", function () {
      clearFieldError($("token"));
      try { window.sessionStorage.setItem(TOKEN_KEY, $("token").value.trim()); } catch (e) { /* private mode */ }
      showTokenState();
      $("file-status").textContent = "";
      loadOptions();
      loadModelInfo();
    });
    $("token-clear").addEventListener("click", function () {
      $("token").value = "";
      try { window.sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* private mode */ }
      showTokenState();
    });
    $("add-lab").addEventListener("click", function () {
      addLabRow({}).querySelector("select").focus();
    });
    $("add-regimen").addEventListener("click", function () {
      addRegimenRow({}).querySelector("input").focus();
    });
    $("clear-form").addEventListener("click", function () {
      clearForm();
      clearResult("Fill in the form and press “Estimate response probability”.");
      addLabRow({ test: "PLT" });
      addRegimenRow({});
      $("patient_id").focus();
    });
    $("patient-file").addEventListener("change", onFileChosen);
    $("file-record").addEventListener("change", function () {
      showFileRecord(Number($("file-record").value));
    });
    $("score-form").addEventListener("submit", onSubmit);
    // A field's own error goes away as soon as it is edited; the summary stays until the next submit.
    $("score-form").addEventListener("input", function (ev) {
      if (ev.target.getAttribute && ev.target.getAttribute("aria-invalid")) clearFieldError(ev.target);
      markStale();
    });
    $("score-form").addEventListener("change", function () { markStale(); updateSectionNotes(); });
    // Adding or removing a row changes the request too.
    $("score-form").addEventListener("click", function (ev) {
      var action = ev.target.closest && ev.target.closest("[data-action], #add-lab, #add-regimen");
      if (action) markStale();
    });
    $("example-load").addEventListener("click", loadExample);
    var lastWidth = 0;
    window.addEventListener("resize", function () {
      var w = chartWidth();
      if (state.lastAnswer && Math.abs(w - lastWidth) > 8) { lastWidth = w; drawExplanation(state.lastAnswer); }
    });
    loadExamples();
    loadOptions();
    loadModelInfo();
  }

  window.ctit = {
    sigmoid: sigmoid, parseNumber: parseNumber, formatProbability: formatProbability, waterfallSteps: waterfallSteps, locToTarget: locToTarget,
    calibrationMap: calibrationMap, collectForm: collectForm, renderResult: renderResult,
    wrapText: wrapText, markStale: markStale,
    fields: function () { return { tristate: TRISTATE, patient: PATIENT_FIELDS, episode: EPISODE_FIELDS }; }
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
