// Drives Anvil's web UI in headless Chromium through playwright-core:
// log in, create a volume, resize it, create a target, map the volume,
// create an NVMe subsystem, add the volume as a namespace, set its hosts,
// see the volume on the dashboard, screenshot the dashboard, remove the
// namespace, delete the volume again.
//
// usage: node ui.mjs BASE_URL TOKEN SCREENSHOT_PATH
// Exits non-zero, with the reason on stderr, when any step fails.
import { chromium } from 'playwright-core';

const [base, token, shot] = process.argv.slice(2);
if (!base || !token || !shot) {
  console.error('usage: node ui.mjs BASE_URL TOKEN SCREENSHOT_PATH');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'],
});
const steps = [];
let failed = false;
let page;
try {
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(15000);
  const consoleErrors = [];
  page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', e => consoleErrors.push(String(e)));
  page.on('dialog', d => d.accept());
  const step = async (name, fn) => { await fn(); steps.push(name); };

  await step('login page shown', async () => {
    await page.goto(base + '/');
    await page.locator('#page-login').waitFor({ state: 'visible' });
  });
  await step('wrong token refused', async () => {
    await page.fill('#token', 'not-the-token');
    await page.click('#login-form button[type=submit]');
    await page.locator('#flash.error').waitFor({ state: 'visible' });
    if (await page.locator('#page-dashboard').isVisible()) throw new Error('dashboard shown after a wrong token');
  });
  await step('log in', async () => {
    await page.fill('#token', token);
    await page.click('#login-form button[type=submit]');
    await page.locator('#page-dashboard').waitFor({ state: 'visible' });
    // The refused token above logged a 401 resource error on purpose;
    // from here on the console must stay clean.
    consoleErrors.length = 0;
  });
  await step('create volume', async () => {
    await page.click('nav a[data-page=volumes]');
    const f = page.locator('#volume-create');
    await f.locator('[name=name]').fill('uivol');
    await f.locator('[name=size]').fill('64');
    await f.locator('[name=unit]').selectOption('MiB');
    await f.locator('button[type=submit]').click();
    await page.locator('[data-testid="volume-uivol"]').waitFor();
    const text = await page.locator('[data-testid="volume-uivol"]').innerText();
    if (!text.includes('64.0 MiB')) throw new Error('new volume row: ' + text);
  });
  await step('resize volume', async () => {
    const row = page.locator('[data-testid="volume-uivol"]');
    await row.locator('input[type=number]').fill('128');
    await page.click('[data-testid="resize-uivol"]');
    await page.waitForFunction(() => document.querySelector('[data-testid="volume-uivol"]')?.innerText.includes('128.0 MiB'));
  });
  await step('create target', async () => {
    await page.click('nav a[data-page=targets]');
    const f = page.locator('#target-create');
    await f.locator('[name=iqn]').fill('iqn.2026-11.io.anvil:ui');
    await f.locator('[name=open]').check();
    await f.locator('button[type=submit]').click();
    await page.locator('[data-testid="target-iqn.2026-11.io.anvil:ui"]').waitFor();
  });
  await step('map volume', async () => {
    const f = page.locator('#lun-map');
    await f.locator('[name=iqn]').selectOption('iqn.2026-11.io.anvil:ui');
    await f.locator('[name=lun]').fill('0');
    await f.locator('[name=volume]').selectOption('uivol');
    await f.locator('button[type=submit]').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="target-iqn.2026-11.io.anvil:ui"]')?.innerText.includes('LUN 0 → uivol'));
  });
  await step('create subsystem', async () => {
    await page.click('nav a[data-page=subsystems]');
    const f = page.locator('#subsystem-create');
    await f.locator('[name=nqn]').fill('nqn.2026-11.io.anvil:ui');
    await f.locator('[name=any]').check();
    await f.locator('button[type=submit]').click();
    await page.locator('[data-testid="subsystem-nqn.2026-11.io.anvil:ui"]').waitFor();
  });
  await step('add namespace', async () => {
    const f = page.locator('#ns-add');
    await f.locator('[name=nqn]').selectOption('nqn.2026-11.io.anvil:ui');
    await f.locator('[name=nsid]').fill('3');
    await f.locator('[name=volume]').selectOption('uivol');
    await f.locator('button[type=submit]').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="subsystem-nqn.2026-11.io.anvil:ui"]')?.innerText.includes('NSID 3 → uivol'));
  });
  await step('set subsystem hosts', async () => {
    const row = page.locator('[data-testid="subsystem-nqn.2026-11.io.anvil:ui"]');
    await row.locator('input[type=checkbox]').uncheck();
    await row.locator('textarea').fill('nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427');
    await page.click('[data-testid="hosts-nqn.2026-11.io.anvil:ui"]');
    await page.locator('#flash:not(.error)').filter({ hasText: 'hosts saved' }).waitFor({ state: 'visible' });
  });
  await step('volume on the dashboard', async () => {
    await page.click('nav a[data-page=dashboard]');
    const chart = page.locator('[data-testid="chart-uivol"]');
    await chart.waitFor({ state: 'visible' });
    await page.waitForFunction(() => document.querySelector('[data-testid="chart-uivol"] .legend')?.innerText.includes('mapped by iqn.2026-11.io.anvil:ui'));
    if (process.env.UI_EXPECT_IO) {
      // The test drives I/O at the LUN: the chart must show it live.
      await page.waitForFunction(() => /read [1-9][0-9]*\.[0-9]+ MiB\/s|read 0\.(0[1-9]|[1-9][0-9]) MiB\/s/.test(
        document.querySelector('[data-testid="chart-uivol"] .legend')?.innerText || ''), null, { timeout: 20000 });
    }
    // Let a few samples arrive so the chart has a line.
    await page.waitForTimeout(4500);
    await page.screenshot({ path: shot, fullPage: true });
  });
  if (process.env.UI_EXPECT_IO) {
    await step('session listed', async () => {
      await page.click('nav a[data-page=sessions]');
      await page.waitForFunction(() => document.querySelector('#sessions-body')?.innerText.includes('iqn.2026-11.io.anvil:ui'));
    });
  }
  await step('remove namespace', async () => {
    await page.click('nav a[data-page=subsystems]');
    await page.click('[data-testid="nsremove-nqn.2026-11.io.anvil:ui-3"]');
    await page.waitForFunction(() => !document.querySelector('[data-testid="subsystem-nqn.2026-11.io.anvil:ui"]')?.innerText.includes('NSID 3'));
  });
  await step('delete volume', async () => {
    await page.click('nav a[data-page=volumes]');
    await page.click('[data-testid="delete-uivol"]');
    await page.locator('[data-testid="volume-uivol"]').waitFor({ state: 'detached' });
  });
  await step('no script errors', async () => {
    if (consoleErrors.length) throw new Error('console errors: ' + consoleErrors.join(' | '));
  });
} catch (e) {
  failed = true;
  console.error(`step after [${steps.join(', ')}] failed: ${e.message}`);
  if (page) {
    const failShot = shot.replace(/\.png$/, '') + '-failure.png';
    await page.screenshot({ path: failShot, fullPage: true }).catch(() => {});
    const msg = await page.locator('#flash').innerText().catch(() => '');
    console.error(`last message on the page: ${JSON.stringify(msg)}; screenshot of the failure: ${failShot}`);
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok: !failed, steps, screenshot: shot }));
process.exit(failed ? 1 : 0);
