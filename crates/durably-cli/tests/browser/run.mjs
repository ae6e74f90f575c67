// Real-client test: bundles the page in src/ (published @coji/durably-react, fullstack mode)
// with esbuild, starts `durably demo` on a free loopback port, and drives the page in headless
// Debian chromium through playwright-core:
//   1. trigger `steps` and watch live progress arrive over SSE until the run completes;
//   2. trigger `sleep`, wait until it is leased, cancel it from the page.
// The page is served at <demo origin>/app/ by Playwright request routing, so its fetch and
// EventSource calls reach the demo same-origin, exactly as in a real deployment.
//
// Env: DURABLY_BIN (the `durably` binary, required), CHROMIUM (default /usr/bin/chromium),
// SCREENSHOT (optional PNG path).
import { spawn } from 'node:child_process'
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, extname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { chromium } from 'playwright-core'

const here = dirname(fileURLToPath(import.meta.url))
const bin = process.env.DURABLY_BIN
if (!bin) throw new Error('DURABLY_BIN must name the durably binary')
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium'

const watchdog = setTimeout(() => {
  console.error('browser test: timed out after 120 s')
  process.exit(1)
}, 120_000)

function check(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`)
}

async function startDemo(dir) {
  const child = spawn(bin, ['demo', '--port', '0', '--db', join(dir, 'demo.sqlite')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const lines = createInterface({ input: child.stdout })
  const origin = await new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`durably demo exited early (${code})`)))
    lines.on('line', (line) => {
      const match = line.match(/http:\/\/[^\s/]+/)
      if (match) resolve(match[0])
    })
  })
  return { child, origin }
}

const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.map': 'application/json' }

async function main() {
  const dist = join(here, 'dist')
  await build({
    entryPoints: [join(here, 'src/main.js')],
    bundle: true,
    format: 'esm',
    outfile: join(dist, 'app.js'),
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'warning',
  })
  copyFileSync(join(here, 'index.html'), join(dist, 'index.html'))
  const dir = mkdtempSync(join(tmpdir(), 'durably-browser-'))
  const { child, origin } = await startDemo(dir)
  const api = `${origin}/api/durably`
  let browser
  try {
    browser = await chromium.launch({
      executablePath,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--no-first-run',
      ],
    })
    const page = await browser.newPage()
    const pageErrors = []
    page.on('pageerror', (error) => pageErrors.push(String(error)))
    await page.route(`${origin}/app/**`, async (route) => {
      const path = new URL(route.request().url()).pathname.replace(/^\/app\//, '') || 'index.html'
      try {
        await route.fulfill({
          status: 200,
          contentType: types[extname(path)] || 'application/octet-stream',
          body: readFileSync(join(dist, path)),
        })
      } catch {
        await route.fulfill({ status: 404, body: 'not found' })
      }
    })
    await page.goto(`${origin}/app/index.html`)
    const text = (id) => page.getByTestId(id).textContent()
    const waitFor = (id, value, timeout = 30_000) =>
      page.waitForFunction(
        ([id, value]) => document.querySelector(`[data-testid="${id}"]`)?.textContent === value,
        [id, value],
        { timeout },
      )

    // 1. steps: live progress through SSE, then completion
    await page.getByTestId('steps-trigger').click()
    await waitFor('steps-status', 'completed')
    check((await text('steps-output')) === '{"sum":15}', `steps output ${await text('steps-output')}`)
    check((await text('steps-progress')) === '5/5', `final progress ${await text('steps-progress')}`)
    check((await text('steps-message')) === 'step 5/5', `progress message ${await text('steps-message')}`)
    check((await text('steps-logs')) === '5', `log entries ${await text('steps-logs')}`)
    const seen = await page.evaluate(() => window.__seen.steps)
    const live = seen.filter((s) => s.status === 'leased' && /^[1-4]\/5$/.test(s.progress)).map((s) => s.progress)
    check(live.length >= 2, `intermediate progress while leased: ${JSON.stringify(seen)}`)
    const stepsRun = await text('steps-run')
    const stored = await (await fetch(`${api}/run?runId=${encodeURIComponent(stepsRun)}`)).json()
    check(stored.status === 'completed', `server says ${stored.status}`)

    // 2. sleep: trigger, leased, cancel from the page
    await page.getByTestId('sleep-trigger').click()
    await waitFor('sleep-status', 'leased')
    await page.getByTestId('sleep-cancel').click()
    await waitFor('sleep-status', 'cancelled')
    const sleepRun = await text('sleep-run')
    const cancelled = await (await fetch(`${api}/run?runId=${encodeURIComponent(sleepRun)}`)).json()
    check(cancelled.status === 'cancelled', `server says ${cancelled.status}`)

    // the runs list (useRuns over GET /runs + /runs/subscribe) shows both runs
    await page.waitForFunction(
      () => document.querySelectorAll('[data-testid="runs"] li').length === 2,
      null,
      { timeout: 10_000 },
    )
    const statuses = await page.$$eval('[data-testid="runs"] li', (items) => items.map((li) => li.textContent))
    check(
      JSON.stringify(statuses) === JSON.stringify(['sleep cancelled', 'steps completed']),
      `runs list ${JSON.stringify(statuses)}`,
    )
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT })
    check(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`)
    console.log(`browser test: steps progress seen live ${JSON.stringify(live)}; sleep cancelled`)
  } finally {
    if (browser) await browser.close()
    child.kill('SIGINT')
    await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', resolve)))
    rmSync(dir, { recursive: true, force: true })
  }
}

main().then(
  () => {
    clearTimeout(watchdog)
    console.log('browser test passed')
  },
  (error) => {
    console.error(error)
    process.exit(1)
  },
)
