// Drive the OHIF 3 viewer the server serves at /viewer/, in Debian's Chromium, as an annotator would.
//
//   node ohif_scribbles.mjs paint  <server url> <StudyInstanceUID> <CT SeriesInstanceUID> <strokes.json> <out>
//   node ohif_scribbles.mjs result <server url> <StudyInstanceUID> <CT SeriesInstanceUID> <result description> <out> <z>
//
// paint: segmentation mode -> Add segmentation -> segments renamed to the strokes' names -> the Brush,
// dragged with the mouse along each stroke (world points, LPS mm, on one CT slice) -> Export -> DICOM SEG
// named "scribbles" -> Save (STOW-RS to the PACS through the server). Writes painted.png (the viewports),
// paint.png (the window) and paint.json: the voxels OHIF holds per segment and the store's HTTP status.
// result: opens the study, double-clicks the result SEG series in the study browser, answers Yes to opening
// it, waits until OHIF has loaded it, scrolls to the slice at world z and writes result.png (the window),
// result_viewports.png and result.json (segment labels and the number of voxels OHIF holds).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [step, server, study, ctSeries, arg, out, z] = process.argv.slice(2);
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'];
const BRUSH_RADIUS_MM = '4';

fs.mkdirSync(out, { recursive: true });
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ohif-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: CHROMIUM_ARGS,
  viewport: { width: 1600, height: 900 },
});
const result = { pageErrors: [], failedRequests: [] };
const page = context.pages()[0] ?? (await context.newPage());
page.setDefaultTimeout(120_000);
page.on('pageerror', (error) => result.pageErrors.push(error.message));
page.on('response', (response) => {
  if (response.status() >= 500) result.failedRequests.push(`${response.status()} ${response.url()}`);
});

// OHIF's panels re-render while data loads: retry a UI step that found its element detached
async function retry(action, tries = 5) {
  for (let i = 1; ; i++) {
    try {
      return await action();
    } catch (error) {
      if (i >= tries) throw error;
      await page.keyboard.press('Escape');
      await page.waitForTimeout(1000);
    }
  }
}

async function openStudy() {
  await page.goto(`${server}/viewer/segmentation?StudyInstanceUIDs=${study}`);
  await page.waitForFunction(
    (series) => window.cornerstone?.getRenderingEngines()[0]?.getViewports()
      .some((v) => v.getCurrentImageId?.()?.includes(series) && v.getImageData?.()),
    ctSeries,
  );
  const banner = page.getByText('Confirm and hide');
  if (await banner.isVisible()) await banner.click();
  await page.waitForTimeout(2000);
}

// the CT viewport's id and its element's box on the page
function ctViewport() {
  return page.evaluate((series) => {
    const viewport = window.cornerstone.getRenderingEngines()[0].getViewports()
      .find((v) => v.getCurrentImageId()?.includes(series));
    const box = viewport.element.getBoundingClientRect();
    return { id: viewport.id, x: box.x, y: box.y, width: box.width, height: box.height };
  }, ctSeries);
}

function viewportCall(id, fn, arg) {
  return page.evaluate(([id, fn, arg]) => {
    const viewport = window.cornerstone.getRenderingEngines()[0].getViewport(id);
    return new Function('viewport', 'cornerstone', 'arg', fn)(viewport, window.cornerstone, arg);
  }, [id, fn, arg]);
}

// scroll with the mouse wheel over the CT viewport until it shows the slice at world z
async function scrollToSlice(viewport, z) {
  const currentZ = 'return cornerstone.metaData.get("imagePlaneModule", viewport.getCurrentImageId()).imagePositionPatient[2];';
  await page.mouse.move(viewport.x + viewport.width / 2, viewport.y + viewport.height / 2);
  for (let i = 0; i < 200; i++) {
    const distance = z - (await viewportCall(viewport.id, currentZ));
    if (Math.abs(distance) < 1e-3) return;
    const before = await viewportCall(viewport.id, 'return viewport.getCurrentImageIdIndex();');
    await page.mouse.wheel(0, 100);
    await page.waitForTimeout(150);
    const after = await viewportCall(viewport.id, 'return viewport.getCurrentImageIdIndex();');
    const moved = (await viewportCall(viewport.id, currentZ)) - (z - distance);
    if (after !== before && Math.sign(moved) !== Math.sign(distance)) {
      await page.mouse.wheel(0, -100); // wheel down went the other way: scroll up from here on
      await page.waitForTimeout(150);
      for (let j = 0; j < 200; j++) {
        if (Math.abs(z - (await viewportCall(viewport.id, currentZ))) < 1e-3) return;
        await page.mouse.wheel(0, -100);
        await page.waitForTimeout(150);
      }
    }
  }
  throw new Error(`could not scroll to the slice at z=${z}`);
}

async function renameSegment(index, name) {
  const row = page.locator('[data-cy="data-row"]').nth(index);
  await retry(async () => {
    await row.locator('[data-cy="actionsMenuTrigger"]').click();
    await page.getByRole('menuitem', { name: 'Rename' }).click({ timeout: 3000 });
  });
  const dialog = page.getByRole('dialog');
  await dialog.locator('input').fill(name);
  await dialog.getByRole('button', { name: 'Save' }).click();
  await page.locator('[data-cy="data-row-title"]').nth(index).getByText(name, { exact: true }).waitFor();
}

// what OHIF holds: per segment, the voxels of every labelmap slice (position of the slice, row, column)
function heldVoxels() {
  return page.evaluate(() => {
    const service = window.services.segmentationService;
    const [segmentation] = service.getSegmentations();
    const labelmap = segmentation.representationData.Labelmap;
    const segments = Object.fromEntries(Object.entries(segmentation.segments).map(([i, s]) => [i, s.label]));
    const voxels = [];
    for (const imageId of labelmap.imageIds) {
      const image = window.cornerstone.cache.getImage(imageId);
      const plane = window.cornerstone.metaData.get('imagePlaneModule', image.referencedImageId);
      const pixels = image.getPixelData();
      for (let p = 0; p < pixels.length; p++) {
        if (pixels[p]) voxels.push([plane.imagePositionPatient, Math.floor(p / image.columns), p % image.columns, pixels[p]]);
      }
    }
    return { segments, voxels };
  });
}

async function paint(strokes) {
  await openStudy();
  await retry(() => page.getByText('Add segmentation', { exact: true }).click({ timeout: 5000 }));
  await page.locator('[data-cy="data-row"]').first().waitFor();
  for (const [index, stroke] of strokes.entries()) {
    if (index > 0) {
      await page.getByText('Add Segment', { exact: true }).click();
      await page.locator('[data-cy="data-row"]').nth(index).waitFor();
    }
    await renameSegment(index, stroke.name);
  }
  await page.locator('[data-cy="Brush-btn"]').click();
  const radius = page.locator('[data-cy="brush-radius"] input');
  await radius.fill(BRUSH_RADIUS_MM);
  await radius.press('Enter');

  const viewport = await ctViewport();
  await scrollToSlice(viewport, strokes[0].points[0][2]);
  await page.locator('[data-cy="viewport-grid"]').screenshot({ path: path.join(out, 'before.png') });
  for (const [index, stroke] of strokes.entries()) {
    // the active segment: under load OHIF may take a moment to switch, and a stroke drawn before goes to the old one
    await retry(async () => {
      await page.locator('[data-cy="data-row"]').nth(index).click();
      await page.waitForFunction(
        ([id, segment]) => window.services.segmentationService.getActiveSegment(id)?.segmentIndex === segment,
        [viewport.id, index + 1],
        { timeout: 5000 },
      );
    });
    const canvas = await viewportCall(viewport.id, 'return arg.map((p) => viewport.worldToCanvas(p));', stroke.points);
    const screen = canvas.map(([x, y]) => [viewport.x + x, viewport.y + y]);
    await page.mouse.move(...screen[0]);
    await page.mouse.down();
    for (const point of screen.slice(1)) await page.mouse.move(...point, { steps: 8 });
    await page.mouse.up();
    await page.waitForTimeout(300);
  }
  await page.waitForTimeout(1000);
  await page.locator('[data-cy="viewport-grid"]').screenshot({ path: path.join(out, 'painted.png') });
  Object.assign(result, await heldVoxels());

  await retry(async () => {
    await page.locator('[data-cy="segmentation-collapsed-more-btn-Labelmap"]').click();
    await page.getByRole('menuitem', { name: 'Export' }).hover({ timeout: 3000 });
    await page.getByRole('menuitem', { name: 'DICOM SEG' }).click({ timeout: 3000 });
  });
  const dialog = page.getByRole('dialog');
  await dialog.getByPlaceholder('Report name').fill('scribbles');
  const stored = page.waitForResponse((r) => r.request().method() === 'POST' && r.url().startsWith(`${server}/proxy/dicom/`));
  await dialog.getByRole('button', { name: 'Save' }).click();
  result.storeStatus = (await stored).status();
  await page.waitForTimeout(2000);
  await page.screenshot({ path: path.join(out, 'paint.png') });
}

async function showResult(description, sliceZ) {
  await openStudy();
  const thumbnail = page.getByText(description, { exact: true });
  await retry(() => thumbnail.dblclick({ timeout: 10000 }));
  await retry(() => page.getByRole('button', { name: 'Yes' }).click({ timeout: 10000 }));
  await page.waitForFunction(() => {
    const [segmentation] = window.services.segmentationService.getSegmentations();
    return segmentation && Object.keys(segmentation.segments).length > 0;
  });
  await scrollToSlice(await ctViewport(), sliceZ);
  await page.waitForTimeout(3000); // drawn on the next renders
  const loaded = await heldVoxels();
  result.segments = loaded.segments;
  result.voxelCount = loaded.voxels.length;
  await page.locator('[data-cy="viewport-grid"]').screenshot({ path: path.join(out, 'result_viewports.png') });
  await page.screenshot({ path: path.join(out, 'result.png') });
}

try {
  if (step === 'paint') await paint(JSON.parse(fs.readFileSync(arg, 'utf-8')));
  else await showResult(arg, Number(z));
} finally {
  fs.writeFileSync(path.join(out, `${step}.json`), JSON.stringify(result));
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
