// Opens a report.html in headless Chromium (PROFILER_CHROMIUM or /usr/bin/chromium), and
// prints as JSON what a reader would see: the verdict, the page's errors, every request it
// made, and for each flamegraph whether inferno's script ran and a click zooms.
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";

const executablePath = process.env.PROFILER_CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
const page = await browser.newPage();
const requests = [];
const errors = [];
page.on("request", (request) => requests.push(request.url().slice(0, 60)));
page.on("pageerror", (error) => errors.push(String(error)));
page.on("console", (message) => {
  if (message.type() === "error") errors.push(message.text());
});
await page.goto(pathToFileURL(process.argv[2]).href, { waitUntil: "load" });
const verdict = await page.$$eval("ol.verdict li", (items) => items.map((li) => li.textContent));
const views = await page.$$eval("div.view", (all) => all.map((div) => div.id.replace("view-", "")));
const embedded = page.frames().filter((frame) => frame.parentFrame() !== null);
const flamegraphs = [];
for (const [index, view] of views.entries()) {
  const frame = embedded[index];
  const result = { view, visible: await page.isVisible(`#view-${view} iframe`) };
  if (frame) {
    await frame.waitForFunction(() => typeof unzoombtn !== "undefined" && unzoombtn !== null, null, { timeout: 5000 })
      .catch(() => {});
    result.script_ran = await frame.evaluate(() => typeof unzoombtn !== "undefined" && unzoombtn !== null);
    result.frames = await frame.evaluate(() => document.querySelectorAll("#frames > g").length);
    // Click a frame other than the root: inferno zooms and shows its "Reset Zoom" button.
    const clicked = await frame.evaluate(() => {
      const groups = [...document.querySelectorAll("#frames > g")];
      const target = groups.find((g) => g.querySelector("title") && !g.querySelector("title").textContent.startsWith("all "));
      if (!target) return false;
      target.dispatchEvent(new MouseEvent("click", { bubbles: true }));
      return true;
    });
    result.zoomed = clicked && await frame.evaluate(() => !unzoombtn.classList.contains("hide"));
  }
  flamegraphs.push(result);
}
const sections = await page.$$eval("section", (all) => all.map((s) => s.id));
console.log(JSON.stringify({ verdict, sections, flamegraphs, requests, errors }));
await browser.close();
