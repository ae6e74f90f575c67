// The acceptance test of durably in the browser (issue 28): a page built with esbuild from the
// published @coji/durably-react SPA hooks, whose durably instance is durably-browser's client
// of a dedicated worker running the engine on SQLite in OPFS. In headless Debian chromium:
//   1. trigger a three-step job from the page (useJob); watch its status, progress and logs;
//   2. reload the page while step 2 runs (after step 1 completed);
//   3. after the reload the same run resumes (once its lease expired) and completes, shown by
//      the hooks; step 1's and step 3's functions ran once in all, step 2's twice (it was cut);
//   4. a second tab waits while the first holds the database, and takes over once it closes.
// With --figures it also measures the time from page load to the first completed run and the
// throughput of one-step jobs, and prints them.
//
// Usage: node spa.mjs PACKAGE_DIR [--figures]   (PACKAGE_DIR: crates/durably/browser/build.sh's
// output). Env: CHROMIUM (default /usr/bin/chromium).
import { mkdtempSync, readFileSync, rmSync, copyFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { dirname, extname, join, normalize, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { chromium } from 'playwright-core'
import { waiter } from './support.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const pkg = process.argv[2] && resolve(process.argv[2])
const figures = process.argv.includes('--figures')
if (!pkg) throw new Error('usage: node spa.mjs PACKAGE_DIR [--figures] (crates/durably/browser/build.sh builds it)')
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium'
const WAIT_MS = 60_000

const watchdog = setTimeout(() => {
  console.error('spa test: timed out after 300 s')
  process.exit(1)
}, 300_000)

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function check(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`)
}

// The page's and the worker's bundles import the package from /pkg/ (not bundled), so that
// wasm-bindgen's glue finds the .wasm next to itself.
const packageExternal = {
  name: 'durably-browser',
  setup(build) {
    build.onResolve({ filter: /^durably-browser(\/worker)?$/ }, (args) => ({
      path: args.path === 'durably-browser' ? '/pkg/index.js' : '/pkg/worker.js',
      external: true,
    }))
  },
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.map': 'application/json' }

/** Serves `dist` at / and the package at /pkg/ on a free loopback port (a secure context). */
async function serve(dist) {
  const server = createServer((request, response) => {
    const path = normalize(decodeURIComponent(new URL(request.url, 'http://x').pathname))
    if (path === '/favicon.ico') return response.writeHead(204).end()
    const file = path.startsWith('/pkg/') ? join(pkg, path.slice(5)) : join(dist, path === '/' ? 'index.html' : path)
    try {
      const body = readFileSync(file)
      response.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' })
      response.end(body)
    } catch {
      response.writeHead(404).end()
    }
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { server, origin: `http://127.0.0.1:${server.address().port}` }
}

const dist = mkdtempSync(join(tmpdir(), 'durably-spa-'))
let server
const profiles = []
const contexts = []
try {
  const common = { bundle: true, format: 'esm', plugins: [packageExternal], logLevel: 'warning' }
  await build({
    ...common,
    entryPoints: [join(here, 'src/spa/main.jsx')],
    outfile: join(dist, 'app.js'),
    jsx: 'automatic',
    define: { 'process.env.NODE_ENV': '"production"' },
  })
  await build({ ...common, entryPoints: [join(here, 'src/spa/worker.js')], outfile: join(dist, 'worker.js') })
  copyFileSync(join(here, 'index.html'), join(dist, 'index.html'))
  let origin
  ;({ server, origin } = await serve(dist))

  // A persistent profile (OPFS on disk, as in a user's browser), new for each step below.
  const launch = () => {
    const dir = mkdtempSync(join(tmpdir(), 'durably-spa-profile-'))
    profiles.push(dir)
    return chromium.launchPersistentContext(dir, {
      executablePath,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
    })
  }
  const context = await launch()
  contexts.push(context)
  const page = await context.newPage()
  const pageErrors = []
  page.on('pageerror', (error) => pageErrors.push(String(error)))
  page.on('console', (message) => {
    if (message.type() === 'error') pageErrors.push(message.text())
  })
  const text = (selector) => page.locator(selector).innerText()

  const until = waiter(page, pageErrors, WAIT_MS)
  const textIs = (id, expected) => until(`#${id} to read "${expected}"`, ([id, expected]) => document.getElementById(id)?.innerText === expected, [id, expected])
  const executions = () =>
    page.evaluate(async () => {
      const keys = await (await caches.open('durably-spa-test')).keys()
      const counts = {}
      for (const key of keys) {
        const [, kind, step] = new URL(key.url).pathname.split('/')
        if (kind === 'exec') counts[step] = (counts[step] ?? 0) + 1
      }
      return counts
    })

  // 1. Trigger the job and watch it live, up to step 2 running.
  await page.goto(`${origin}/?db=resume`)
  await until('the page to connect to the worker', () => document.getElementById('trigger') !== null)
  await page.click('#trigger')
  await textIs('status', 'leased')
  await until('step 1\'s progress', () => document.getElementById('progress')?.innerText.startsWith('1/3 first done'))
  await until('the logs "first ran" and "second waiting"', () => {
    const logs = [...document.querySelectorAll('#logs li')].map((li) => li.innerText)
    return logs.includes('first ran') && logs.includes('second waiting')
  })
  const runId = await text('#run-id')
  check(runId.length > 0, 'the page shows the run id')
  check(JSON.stringify(await executions()) === JSON.stringify({ first: 1, second: 1 }), `before the reload: ${JSON.stringify(await executions())}`)

  // 2. Reload mid-step 2: the worker is terminated with the run leased.
  const reloadedAt = Date.now()
  await page.reload()
  await until('the page to reconnect after the reload', () => document.getElementById('trigger') !== null)

  // 3. The new worker takes the run over once its lease expired; useJob follows it (its
  // auto-resume finds the leased run, or its run:leased event arrives). Then the test lets step
  // 2 finish: the page must show the rest of the run live.
  await until(`the page to follow run ${runId} after the reload`, (id) => document.getElementById('run-id')?.innerText === id, runId)
  await page.evaluate(async () => (await caches.open('durably-spa-test')).put('/release', new Response('go')))
  await until('the log "third ran" after the reload', () => [...document.querySelectorAll('#logs li')].some((li) => li.innerText === 'third ran'))
  await textIs('status', 'completed')
  const completedMs = Date.now() - reloadedAt
  check((await text('#output')) === '{"total":3}', `output: ${await text('#output')}`)
  check((await text('#progress')).startsWith('3/3 all done'), `progress: ${await text('#progress')}`)
  await until('useRuns to list the one completed run', (id) => {
    const items = [...document.querySelectorAll('#runs li')].map((li) => li.innerText)
    return items.length === 1 && items[0] === `${id} completed`
  }, runId)
  const counts = await executions()
  check(counts.first === 1, `step 1's function ran once across both loads (ran ${counts.first ?? 0} times)`)
  check(counts.second === 2, `step 2's function ran twice (cut by the reload, then again) (ran ${counts.second ?? 0} times)`)
  check(counts.third === 1, `step 3's function ran once (ran ${counts.third ?? 0} times)`)
  const run = await page.evaluate((id) => window.__durably.getRun(id), runId)
  check(run.status === 'completed' && run.output.total === 3, `getRun: ${JSON.stringify(run)}`)
  check(pageErrors.length === 0, `page errors: ${JSON.stringify(pageErrors)}`)
  // 4. One tab per origin: a second tab's worker waits while this tab's holds the OPFS pool,
  // and takes over when this tab closes (startDurablyWorker retries opening).
  const second = await context.newPage()
  second.on('pageerror', (error) => pageErrors.push(`second tab: ${error}`))
  await second.goto(`${origin}/?db=resume`)
  await second.waitForFunction(() => document.getElementById('loading') !== null, null, { timeout: WAIT_MS })
  await sleep(1000)
  check(await second.locator('#trigger').count() === 0, 'the second tab waits while the first tab holds the database')
  await page.close()
  try {
    await second.waitForFunction(
      (id) => [...document.querySelectorAll('#runs li')].some((li) => li.innerText === `${id} completed`),
      runId,
      { timeout: WAIT_MS, polling: 50 },
    )
  } catch (error) {
    throw new Error(`the second tab did not take over within ${WAIT_MS / 1000} s once the first closed: ${error.message.split('\n')[0]}\npage:\n${await second.locator('body').innerText()}\npage errors: ${JSON.stringify(pageErrors)}`)
  }
  check(pageErrors.length === 0, `page errors: ${JSON.stringify(pageErrors)}`)
  await second.close()
  console.log(`after the reload, run ${runId} completed in ${completedMs} ms (lease 1500 ms); step executions ${JSON.stringify(counts)}`)

  if (figures) {
    // Time from navigation start to the first completed run, in a new profile (empty caches
    // and OPFS). Not in an incognito context (`browser.newContext()`): its OPFS is not on
    // disk, and each file operation is about 100 times slower.
    const figuresContext = await launch()
    contexts.push(figuresContext)
    const fresh = await figuresContext.newPage()
    await fresh.goto(`${origin}/?db=${process.env.FIGURES_DB || 'figures'}&only=quick`)
    await fresh.waitForFunction(() => document.getElementById('quick') !== null, null, { timeout: WAIT_MS })
    await fresh.click('#quick')
    await fresh.waitForFunction(() => document.getElementById('quick-status')?.innerText === 'completed', null, { timeout: WAIT_MS, polling: 'raf' })
    const firstMs = await fresh.evaluate(() => performance.now())
    // Throughput: N one-step jobs triggered at once (one trigger each, or one batchTrigger),
    // until all completed.
    const measure = (batch) =>
      fresh.evaluate(
        async ([n, batch]) => {
          const client = window.__durably
          const done = new Set()
          let finish
          const all = new Promise((resolve) => (finish = resolve))
          const off = client.on('run:complete', (event) => {
            if (event.jobName === 'quick' && done.add(event.runId).size === n) finish()
          })
          const started = performance.now()
          const inputs = Array.from({ length: n }, (_, i) => ({ n: i }))
          if (batch) await window.__quick.batchTrigger(inputs)
          else await Promise.all(inputs.map((input) => window.__quick.trigger(input)))
          const triggered = performance.now() - started
          await all
          off()
          return { ms: performance.now() - started, triggered }
        },
        [n, batch],
      )
    const n = 200
    const rate = ({ ms, triggered }) => `${Math.round(ms)} ms (${Math.round((n / ms) * 1000)} jobs/s; triggering took ${Math.round(triggered)} ms)`
    const one = await measure(false)
    const batch = await measure(true)
    console.log(`figures: first completed run ${Math.round(firstMs)} ms after navigation start; ${n} one-step jobs: ${rate(one)} by trigger, ${rate(batch)} by one batchTrigger`)
    await fresh.close()
  }
  console.log('spa browser test passed')
} finally {
  clearTimeout(watchdog)
  for (const context of contexts) await context.close().catch(() => {})
  server?.close()
  rmSync(dist, { recursive: true, force: true })
  for (const dir of profiles) rmSync(dir, { recursive: true, force: true })
}
