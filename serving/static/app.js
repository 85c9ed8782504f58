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
  var TRISTATE = ["bone_mets", "liver_mets", "marrow_involvement", "splenomegaly", "prior_radiotherapy"];
  var PATIENT_FIELDS = ["patient_id", "sex", "birth_date", "race", "ecog", "subtype"].concat(TRISTATE);
  var EPISODE_FIELDS = ["episode_id", "index_date", "dose_mg", "age_years"];
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

  function loadOptions() {
    return fetchJson("ui/options", { headers: authHeaders() }).then(function (res) {
      if (!res.ok) {
        showSummary([{ text: "Could not load the list of tests and drugs: " + describeHttpFailure(res),
                       target: res.status === 401 || res.status === 403 ? $("token") : null }]);
        if (res.status === 401 || res.status === 403) $("access-panel").open = true;
        return;
      }
      state.options = res.body;
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
      var parts = ["Model: " + (m.name || "unnamed")];
      if (m.version !== undefined && m.version !== null) parts.push("version " + m.version);
      if (m.label_definition) parts.push("response = " + labelText(m.label_definition));
      line.textContent = parts.join(" · ");
    }).catch(function () {
      state.calibration = null;
      $("model-line").textContent = "Model: server unreachable";
    });
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

    ["sex", "birth_date", "race", "subtype"].forEach(function (id) {
      var raw = val(id);
      if (raw) patient[id] = raw; else delete patient[id];
    });
    if (val("ecog") !== "") patient.ecog = Number(val("ecog")); else delete patient.ecog;
    TRISTATE.forEach(function (id) {
      var raw = val(id);
      if (raw === "true") patient[id] = true;
      else if (raw === "false") patient[id] = false;
      else delete patient[id];
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

  /** A feature's declared description; families declared with `*` match by pattern. */
  function featureLabel(name) {
    var info = state.featureInfo[name];
    if (!info) {
      Object.keys(state.featureInfo).some(function (pattern) {
        if (pattern.indexOf("*") < 0) return false;
        var re = new RegExp("^" + pattern.split("*").map(function (part) {
          return part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
        }).join("(.*)") + "$");
        var m = re.exec(name);
        if (m) info = { description: state.featureInfo[pattern].description + " (" + m.slice(1).join(", ") + ")" };
        return Boolean(m);
      });
    }
    if (info && info.description) return info.description;
    return String(name).replace(/_/g, " ");
  }

  /** A short chart label: the description without its time anchor or asides, with the value. */
  function shortLabel(name, value) {
    var text = featureLabel(name)
      .replace(/\s*\([^)]*\)/g, "")
      .replace(/ (on or before|before|to) the index date$/, "")
      .replace(/ on or before the index date/, "");
    text = text.charAt(0).toUpperCase() + text.slice(1);
    if (value === null) return text + ": not recorded";
    if (value !== undefined && isFinite(value)) {
      var info = state.featureInfo[name] || {};
      var unit = info.unit || "";
      if (unit === "0/1") text += ": " + (Number(value) >= 0.5 ? "yes" : "no");
      else text += " = " + (Math.round(Number(value) * 100) / 100) + (unit ? " " + displayUnit(unit) : "");
    }
    return text;
  }

  function displayUnit(unit) {
    return String(unit).replace(/^10\*9\//, "×10⁹/").replace(/^10\*3\//, "×10³/");
  }

  function factorText(f) {
    if (typeof f === "string") return f;
    if (!f) return "";
    return f.text || f.description || f.label || f.feature || JSON.stringify(f);
  }

  function truncate(s, n) {
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  /** The labels of the first and last rows: calibrated, or the uncalibrated fallback. */
  function totalLabels(wf) {
    return wf.calibrated
      ? { base: "Average patient (calibrated baseline)", final: "This patient (calibrated probability)" }
      : { base: "Average patient (model baseline, uncalibrated)", final: "This patient (model output, uncalibrated)" };
  }

  function drawWaterfall(wf, stepLabels) {
    var names = totalLabels(wf);
    var rowH = 26;
    var left = 280;
    var plotW = 230;
    var right = 70;
    var top = 22;
    var rows = [{ label: names.base, kind: "total", start: 0, end: wf.base.p,
                  logodds: wf.base.logodds, total: true }]
      .concat(wf.steps.map(function (s, i) {
        return { label: stepLabels[i], kind: s.logodds >= 0 ? "raise" : "lower", start: s.start, end: s.end,
                 logodds: s.logodds };
      }))
      .concat([{ label: names.final, kind: "total", start: 0, end: wf.final.p,
                 logodds: wf.final.logodds, total: true }]);
    var height = top + rows.length * rowH + 44;
    var width = left + plotW + right;
    var x = function (p) { return left + p * plotW; };
    var root = svg("svg", { viewBox: "0 0 " + width + " " + height, class: "waterfall", role: "img",
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
    root.appendChild(svg("text", { x: left + plotW + right - 4, y: 13, "text-anchor": "end", class: "axis-title" },
      "log-odds"));
    [0, 0.25, 0.5, 0.75, 1].forEach(function (t) {
      root.appendChild(svg("line", { class: "grid-line", x1: x(t), x2: x(t), y1: top, y2: top + rows.length * rowH }));
    });
    rows.forEach(function (r, i) {
      var y = top + i * rowH;
      var g = svg("g", { class: "wf-row", "data-kind": r.kind, "data-start": r.start, "data-end": r.end });
      g.appendChild(svg("title", {}, r.label + ": " + formatPercent(r.start, 1) + " → " + formatPercent(r.end, 1) +
        " (log-odds " + formatLogodds(r.logodds) + ")"));
      g.appendChild(svg("text", { x: left - 8, y: y + rowH / 2 + 4, "text-anchor": "end" }, truncate(r.label, 38)));
      var x0 = x(Math.min(r.start, r.end));
      var w = Math.max(Math.abs(x(r.end) - x(r.start)), 1.5);
      g.appendChild(svg("rect", { x: x0, y: y + 5, width: w, height: rowH - 10,
                                  class: r.total ? "bar-total" : "bar-" + r.kind }));
      if (!r.total && i + 1 < rows.length) {
        g.appendChild(svg("line", { class: "connector", x1: x(r.end), x2: x(r.end), y1: y + rowH - 5, y2: y + rowH + 5 }));
      }
      if (r.total) {
        g.appendChild(svg("text", { x: x(r.end) + 4, y: y + rowH / 2 + 4 }, formatProbability(r.end)));
      }
      g.appendChild(svg("text", { x: left + plotW + right - 4, y: y + rowH / 2 + 4, "text-anchor": "end",
                                  class: "logodds" }, formatLogodds(r.logodds)));
      root.appendChild(g);
    });
    var axisY = top + rows.length * rowH;
    var axis = svg("g", { class: "axis" });
    axis.appendChild(svg("line", { x1: x(0), x2: x(1), y1: axisY, y2: axisY }));
    [0, 0.25, 0.5, 0.75, 1].forEach(function (t) {
      axis.appendChild(svg("line", { x1: x(t), x2: x(t), y1: axisY, y2: axisY + 4 }));
      axis.appendChild(svg("text", { x: x(t), y: axisY + 16, "text-anchor": "middle" }, formatPercent(t)));
    });
    axis.appendChild(svg("text", { x: x(0.5), y: axisY + 34, "text-anchor": "middle", class: "axis-title" },
      wf.calibrated ? "Calibrated probability of response" : "Uncalibrated probability of response"));
    root.appendChild(axis);
    return root;
  }

  function chartTable(wf, stepLabels) {
    var table = el("table", { className: "chart-table" });
    table.appendChild(el("thead", {}, [el("tr", {}, [
      el("th", { scope: "col", text: "Factor" }), el("th", { scope: "col", text: "Log-odds" }),
      el("th", { scope: "col", text: "Probability before → after" })])]));
    var body = el("tbody");
    var add = function (label, lo, text) {
      body.appendChild(el("tr", {}, [el("td", { text: label }), el("td", { className: "num", text: formatLogodds(lo) }),
                                     el("td", { className: "num", text: text })]));
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

  function renderResult(answer) {
    var box = $("result");
    box.textContent = "";
    var model = answer.model || {};
    var interval = answer.interval || [];
    var headline = el("div", { className: "headline" }, [
      el("span", { className: "probability", id: "result-probability", text: formatProbability(answer.probability) }),
      el("span", { className: "band band-" + String(answer.band || "").toLowerCase(), id: "result-band",
                   text: bandText(answer.band) })
    ]);
    box.appendChild(el("p", { className: "visually-hidden", text: "Result for episode " + answer.episode_id + "." }));
    box.appendChild(headline);
    box.appendChild(el("p", { className: "interval", id: "result-interval",
      text: "Uncertainty interval " + formatProbability(interval[0]) + " to " + formatProbability(interval[1]) +
            " (spread of the cross-validation models). Episode " + answer.episode_id + "." }));
    box.appendChild(el("p", { text: "Calibrated probability that platelets respond to hetrombopag by the model's " +
      "definition: " + labelText(model.label_definition) + "." }));

    var warnings = answer.warnings || [];
    if (warnings.length) {
      var ul = el("ul");
      warnings.forEach(function (w) {
        ul.appendChild(el("li", { text: typeof w === "string" ? w : w.message || factorText(w) }));
      });
      box.appendChild(el("div", { className: "warnings", id: "result-warnings" }, [el("h3", { text: "Warnings" }), ul]));
    }

    var factors = answer.top_factors || [];
    if (factors.length) {
      var ol = el("ul", { className: "factors", id: "result-factors" });
      factors.forEach(function (f) { ol.appendChild(el("li", { text: factorText(f) })); });
      box.appendChild(el("div", { className: "result-section" }, [el("h3", { text: "Main factors" }), ol]));
    }

    var calibrate = state.calibration;
    var wf = waterfallSteps(answer.base_value, answer.contributions || {}, MAX_FACTORS,
                            calibrate || sigmoid, calibrate ? answer.probability : null);
    wf.calibrated = Boolean(calibrate);
    var values = {};
    (answer.top_factors || []).forEach(function (f) { if (f && f.feature) values[f.feature] = f.value; });
    var stepLabels = wf.steps.map(function (s) {
      return s.kind === "other" ? "Other " + s.count + " factors combined" : shortLabel(s.name, values[s.name]);
    });
    var section = el("div", { className: "result-section" }, [
      el("h3", { text: "Why: contributions to this prediction (probability scale)" })]);
    section.appendChild(drawWaterfall(wf, stepLabels));
    var sums = "The numbers at the right are SHAP contributions in log-odds, which add up exactly (baseline " +
      formatLogodds(wf.base.logodds) + " + contributions = margin " + formatLogodds(Number(answer.margin)) + ").";
    section.appendChild(el("p", { className: "chart-note", id: "chart-note", text: calibrate
      ? "Bars move from the calibrated baseline (" + formatPercent(wf.base.p, 1) + ", an average patient) to " +
        "this patient's calibrated probability (" + formatPercent(wf.final.p, 1) + ", the probability shown " +
        "above), one factor at a time: each bar shows how the calibrated probability changes when that " +
        "factor's log-odds are added. Blue raises and orange lowers the probability of response. " + sums
      : "The model's calibration could not be loaded (model information unavailable), so the bars use the " +
        "uncalibrated model output (the logistic of the log-odds): they end at " + formatPercent(wf.final.p, 1) +
        ", not at the calibrated probability shown above. Blue raises and orange lowers the probability of " +
        "response. " + sums }));
    section.appendChild(el("details", {}, [el("summary", { text: "Chart values as a table" }), chartTable(wf, stepLabels)]));
    box.appendChild(section);

    var dl = el("dl");
    var add = function (k, v) { dl.appendChild(el("dt", { text: k })); dl.appendChild(el("dd", { text: v })); };
    add("Model", (model.name || "unnamed") + (model.version !== undefined ? ", version " + model.version : ""));
    add("Response definition", labelText(model.label_definition));
    var meta = el("div", { className: "model-meta result-section", id: "result-model" }, [el("h3", { text: "Model" }), dl]);
    meta.appendChild(el("p", {}, [el("a", { href: "v1/model", text: "Model card: metrics, training data and label definition" })]));
    box.appendChild(meta);
  }

  // ---------------------------------------------------------------- submit

  function onSubmit(ev) {
    ev.preventDefault();
    clearErrors();
    var sent = collectForm();
    if (sent.errors.length) {
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
        showServerErrors(res.body.detail, sent);
      } else {
        var target = res.status === 401 || res.status === 403 ? $("token") : null;
        if (target) { $("access-panel").open = true; setFieldError(target, "A valid bearer token is required."); }
        showSummary([{ text: describeHttpFailure(res), target: target }]);
      }
    }).catch(function () {
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
    });
    loadOptions();
    loadModelInfo();
  }

  window.ctit = {
    sigmoid: sigmoid, parseNumber: parseNumber, formatProbability: formatProbability, waterfallSteps: waterfallSteps, locToTarget: locToTarget,
    calibrationMap: calibrationMap, collectForm: collectForm, renderResult: renderResult
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
