// Drives Debian's Chromium through the Airflow UI for tests/ui/test_browser.py (playwright-core, no
// browser download). One phase per run, its settings in the JSON of the UI_TEST environment variable:
//
//   node tests/ui/browser.js trigger   log in, open the retrain DAG, fill the trigger form, trigger;
//                                      prints {"run_id": ...}
//   node tests/ui/browser.js models    log in, open "Models" in the navigation, check the run and the
//                                      values it was triggered with, the charts Chart.js drew (the
//                                      performance chart's tooltip and readout when pointing at a point),
//                                      the rollout decisions, the report, the
//                                      link to the run, and roll the champion back through the confirm() dialog
//
// The last line printed is one JSON object; on failure it has "error" and the exit code is 1 (a
// screenshot of the moment is saved as failure-<phase>.png).
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const phase = process.argv[2];
const cfg = JSON.parse(process.env.UI_TEST || '{}');
const out = cfg.artifacts;
const LONG = cfg.timeout_ms || 90000;
const result = { phase };

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function login(page) {
  await page.goto(`${cfg.base_url}/`);
  // The UI sends an anonymous visitor to its login form.
  await page.locator('input[name="username"]').fill(cfg.username, { timeout: LONG });
  await page.locator('input[name="password"]').fill(cfg.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL((url) => !url.pathname.startsWith('/auth'), { timeout: LONG });
  result.logged_in = true;
}

async function trigger(page, context) {
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: cfg.base_url });
  await page.goto(`${cfg.base_url}/dags/${cfg.dag_id}`);
  await page.getByRole('button', { name: /Trigger/ }).first().click({ timeout: LONG });
  const dialog = page.locator('[role="dialog"][data-scope="dialog"]');
  await dialog.locator('input[name="element_reason"]').waitFor({ timeout: LONG });

  await dialog.locator('input[name="element_as_of_date"]').fill(cfg.as_of);
  await dialog.locator('input[name="element_window_days"]').fill(String(cfg.window_days));
  if (cfg.grid) {
    // The grid is a Monaco editor: replace its text by pasting (typing would auto-close the brackets).
    const editor = dialog.locator('[role="group"]').filter({ hasText: 'Hyper-parameter grid' }).locator('.monaco-editor');
    await editor.locator('.view-lines').click();
    await page.keyboard.press('Control+A');
    await page.evaluate((text) => navigator.clipboard.writeText(text), JSON.stringify(cfg.grid));
    await page.keyboard.press('Control+V');
  }
  await dialog.locator('input[name="element_reason"]').fill(cfg.reason);
  const submit = dialog.locator('[data-testid="trigger-dag-submit"]');
  await submit.waitFor({ state: 'visible' });
  await page.waitForFunction((el) => !el.disabled, await submit.elementHandle(), { timeout: 15000 });
  await page.waitForTimeout(300); // let the editor's validation settle before the picture
  await dialog.screenshot({ path: path.join(out, 'trigger-form.png') });

  await submit.click();
  await page.waitForURL(/\/runs\/[^/]+$/, { timeout: LONG });
  result.run_id = decodeURIComponent(new URL(page.url()).pathname.split('/runs/')[1]);
  await page.screenshot({ path: path.join(out, 'triggered-run.png') });
}

async function models(page) {
  // The "Models" entry of the navigation frames the plugin's page at /plugin/models.
  await page.getByRole('link', { name: 'Models' }).click({ timeout: LONG });
  await page.waitForURL(/\/plugin\/models/, { timeout: LONG });
  const frame = page.frameLocator('iframe[title="Models"]');
  const row = frame.locator(`#runs tr[data-run-id="${cfg.run_id}"]`);
  await row.waitFor({ timeout: LONG });

  const text = (await row.innerText()).replace(/\s+/g, ' ');
  result.row = text;
  check(text.includes(cfg.reason), `the run's row does not show the reason ${cfg.reason}: ${text}`);
  check(text.includes(cfg.as_of), `the run's row does not show the as-of date ${cfg.as_of}: ${text}`);
  check(text.includes(`window ${cfg.window_days} d`), `the run's row does not show the window: ${text}`);
  check(/promote/.test(text), `the first run was not promoted: ${text}`);
  if (cfg.grid) check(text.includes('grid:'), `the run's row does not show the non-default grid: ${text}`);
  result.champion = (await frame.locator('#champion-version').innerText()).trim();
  check(result.champion === String(cfg.champion_before), `champion is ${result.champion}, not ${cfg.champion_before}`);
  // The charts are canvases drawn by the page's own copy of Chart.js: read what the library drew.
  const inner = await (await page.locator('iframe[title="Models"]').elementHandle()).contentFrame();
  await inner.waitForFunction(() => window.Chart && window.Chart.getChart('chart-performance'), null, { timeout: LONG });
  const drawn = await inner.evaluate((hover) => {
    const chart = (id) => window.Chart && window.Chart.getChart(id);
    const count = (c, role) => c.data.datasets.filter((d) => d.role === role)
      .reduce((n, d) => n + d.data.filter((p) => p.y !== null).length, 0);
    const metric = chart('chart-metric'), perf = chart('chart-performance');
    if (!metric || !perf) return { missing: true };
    const i = perf.data.datasets.findIndex((d) => d.role === 'realised' && d.version === hover.version);
    // A point's batch is the x label nearest it (versions scored on one batch sit side by side around it).
    const labels = JSON.parse(document.getElementById('chart-performance-data').textContent).x_labels;
    const j = i < 0 ? -1 : perf.data.datasets[i].data.findIndex((p) => p.y !== null && labels[Math.round(p.x)] === hover.batch);
    const at = j < 0 ? null : perf.getDatasetMeta(i).data[j];
    return {
      library: window.Chart.version, metric_points: count(metric, 'metric'),
      realised: count(perf, 'realised'), estimated: count(perf, 'estimated'),
      point: at && { x: at.x, y: at.y },
    };
  }, cfg.hover_point);
  check(!drawn.missing, 'Chart.js did not draw the metric and performance charts');
  check(drawn.metric_points >= 1, 'no point on the metric chart');
  check(drawn.point, `no realised point for ${JSON.stringify(cfg.hover_point)} on the performance chart`);

  // Performance over time: the chart is on screen, and pointing at a realised point shows its value, in the
  // library's tooltip and in the readout under the chart.
  const chart = frame.locator('#chart-performance');
  await chart.scrollIntoViewIfNeeded();
  check(await chart.isVisible(), 'the performance chart is not visible');
  const box = await chart.boundingBox();
  await chart.hover({ position: drawn.point });
  const readout = frame.locator('#chart-performance-readout');
  await readout.filter({ hasText: cfg.hover_point.batch }).waitFor({ timeout: 10000 });
  const tooltip = await inner.evaluate(() => {
    const tip = window.Chart.getChart('chart-performance').tooltip;
    return { opacity: tip.opacity, text: (tip.body || []).map((b) => b.lines.join(' ')).join(' | ') };
  });
  result.performance = {
    readout: (await readout.innerText()).trim(),
    tooltip: tooltip.text,
    tooltip_opacity: tooltip.opacity,
    library: drawn.library,
    realised: drawn.realised,
    estimated: drawn.estimated,
    width: box ? box.width : 0,
  };
  check(result.performance.tooltip === cfg.hover_text, `the tooltip shows ${result.performance.tooltip}`);
  check(result.performance.readout === cfg.hover_text, `the hover shows ${result.performance.readout}`);
  await page.screenshot({ path: path.join(out, 'models-performance.png') });
  const decisions = await frame.locator('#decisions').innerText();
  check(decisions.includes(cfg.decision_reason) && /extend/.test(decisions),
    `the rollout decisions do not show the decision: ${decisions}`);
  await frame.locator('#rollback-form').scrollIntoViewIfNeeded();
  await page.screenshot({ path: path.join(out, 'models-page.png') });

  // The latest evaluation report opens inside the frame, served from the artifact store.
  await frame.locator('#latest-evaluation').click();
  await frame.locator('#lifecycle-back').waitFor({ timeout: LONG });
  const report = await frame.locator('body').innerText();
  check(/roc_auc/i.test(report), 'the evaluation report does not show its metrics');
  result.report_chars = report.length;
  await frame.locator('#lifecycle-back').click();
  await row.waitFor({ timeout: LONG });

  // Rollback: choose version 1, accept the confirm() (asked by the top window: the frame's sandbox has no
  // dialogs of its own), and the page reloads with the new champion.
  let asked = null;
  page.once('dialog', async (dialog) => {
    asked = dialog.message();
    await dialog.accept();
  });
  await frame.locator('#rollback-version').selectOption(String(cfg.rollback_to));
  await frame.locator('#rollback-form input[name="reason"]').fill(cfg.rollback_reason);
  await frame.locator('#rollback-button').click();
  await frame.locator('#champion-version', { hasText: String(cfg.rollback_to) }).waitFor({ timeout: LONG });
  check(asked && asked.includes(`to version ${cfg.rollback_to}`), `unexpected confirmation: ${asked}`);
  result.confirm = asked;
  result.champion_after = (await frame.locator('#champion-version').innerText()).trim();

  // The link to the Airflow run leaves the frame and opens the run in the UI itself.
  await frame.locator(`#runs tr[data-run-id="${cfg.run_id}"] a`, { hasText: 'Airflow run' }).click();
  await page.waitForURL((url) => url.pathname.includes('/runs/'), { timeout: LONG });
  result.airflow_run_url = page.url();
  check(decodeURIComponent(result.airflow_run_url).endsWith(`/dags/${cfg.dag_id}/runs/${cfg.run_id}`),
    `the run link opened ${result.airflow_run_url}`);

  // The page on its own (outside the frame), whole, for the record.
  await page.goto(`${cfg.base_url}/lifecycle/`);
  await page.locator('#champion-version').waitFor({ timeout: LONG });
  await page.screenshot({ path: path.join(out, 'models-page-full.png'), fullPage: true });
}

(async () => {
  fs.mkdirSync(out, { recursive: true });
  const browser = await chromium.launch({
    executablePath: cfg.chromium || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  const context = await browser.newContext({ viewport: { width: 1400, height: cfg.viewport_height || 1500 } });
  context.setDefaultTimeout(LONG);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(String(err)));
  try {
    await login(page);
    if (phase === 'trigger') await trigger(page, context);
    else if (phase === 'models') await models(page);
    else throw new Error(`unknown phase ${phase}`);
    result.page_errors = errors;
    console.log(JSON.stringify(result));
  } catch (err) {
    await page.screenshot({ path: path.join(out, `failure-${phase}.png`), fullPage: true }).catch(() => {});
    result.error = String(err && err.stack ? err.stack : err);
    result.url = page.url();
    result.page_errors = errors;
    console.log(JSON.stringify(result));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
