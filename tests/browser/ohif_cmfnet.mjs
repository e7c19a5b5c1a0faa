// Drive the OHIF viewer that MONAI Label serves at /ohif/, in Debian's Chromium, as a user would:
// open a study in the MONAI Label mode, connect the MONAI Label panel to the server, run the
// `cmfnet` auto-segmentation, and record what the viewer then holds and shows.
//
//   node ohif_cmfnet.mjs <server url> <StudyInstanceUID> <output folder>
//
// Writes to the output folder: before.png / after.png (the viewport grid), ohif_cmfnet.png (the
// whole window), labelmap.bin (OHIF's segmentation voxels, uint8, x fastest) and result.json.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [server, study, out] = process.argv.slice(2);
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
];
const STEP_TIMEOUT = 120_000;

fs.mkdirSync(out, { recursive: true });
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ohif-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true, // playwright passes --headless
  args: CHROMIUM_ARGS,
  viewport: { width: 1600, height: 900 },
});
const result = { pageErrors: [], failedRequests: [] };
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_TIMEOUT);
  page.on('pageerror', (error) => result.pageErrors.push(error.message));
  page.on('response', (response) => {
    if (response.status() >= 500) result.failedRequests.push(`${response.status()} ${response.url()}`);
  });

  await page.goto(`${server}/ohif/monai-label?StudyInstanceUIDs=${study}`);
  const grid = page.locator('[data-cy="viewport-grid"]');
  await grid.waitFor();
  await page.waitForFunction(() => (window.services?.displaySetService?.getActiveDisplaySets() ?? []).length > 0);
  await page.locator('[data-cy="confirm-and-hide-button"]').click();
  await page.waitForTimeout(5000); // let the three MPR viewports finish loading and rendering the volume
  await grid.screenshot({ path: path.join(out, 'before.png') });

  // the MONAI Label panel: point it at this server and connect
  const url = page.locator('#monailabelServerURL');
  await url.fill(`${server}/`);
  const info = page.waitForResponse((r) => r.url().startsWith(`${server}/info/`));
  await url.locator('xpath=ancestor::tr[1]//button').click();
  result.infoStatus = (await info).status();

  // Auto-Segmentation tab -> Run (the first segmentation model, cmfnet)
  await page.getByText('Auto-Segmentation', { exact: true }).click();
  const infer = page.waitForResponse((r) => r.url().startsWith(`${server}/infer/cmfnet`));
  await page.locator('button[title="Run Segmentation"]').click();
  const response = await infer;
  result.inferStatus = response.status();
  result.inferUrl = response.url();
  await page.getByText('Running Segmentation - Successful').waitFor();
  await page.waitForTimeout(3000); // the labelmap is drawn on the next renders
  await grid.screenshot({ path: path.join(out, 'after.png') });
  await page.screenshot({ path: path.join(out, 'ohif_cmfnet.png') });

  const segmentation = await page.evaluate(() => {
    const service = window.services.segmentationService;
    const volume = service.getLabelmapVolume('1');
    const segments = service.getSegmentation('1').segments;
    const labels = Object.fromEntries(Object.entries(segments).map(([index, s]) => [index, s.label]));
    const voxels = volume.voxelManager.getCompleteScalarDataArray();
    return { dimensions: Array.from(volume.dimensions), labels, voxels: Array.from(voxels) };
  });
  fs.writeFileSync(path.join(out, 'labelmap.bin'), Buffer.from(Uint8Array.from(segmentation.voxels)));
  result.dimensions = segmentation.dimensions;
  result.segments = segmentation.labels;
} finally {
  fs.writeFileSync(path.join(out, 'result.json'), JSON.stringify(result, null, 2));
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
