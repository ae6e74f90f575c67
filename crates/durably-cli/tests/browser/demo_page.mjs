// The in-browser demo page of `durably demo` (/browser, issue 28): starts the real binary with
// the durably-browser package and drives the page in headless Debian chromium (a persistent
// profile: OPFS on disk, as in a user's browser):
//   1. the engine starts in the page's worker; a `steps` run completes, shown live (status,
//      progress, output, last log); a `flaky` run fails its first attempt and completes on the
//      second; a `steps` run failing at step 2 shows its error;
//   2. a reload while a run is going: the run resumes in the new worker and completes; a second
//      tab cannot open the database while this one holds it, and says why;
//   3. durably-browser's client: unsubscribing the last listener of a type stops the worker
//      forwarding it; calls waiting when the worker fails reject (not hang), later ones too.
// With --screenshot PATH it saves the page after the completed runs (1000 px wide).
//
// Usage: DURABLY_BIN=... node demo_page.mjs PACKAGE_DIR [--screenshot PATH]
// Env: CHROMIUM (default /usr/bin/chromium).
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { chromium } from 'playwright-core'
import { check, executablePath, start, stop, waiter, watchdog } from './support.mjs'

const pkg = process.argv[2] && resolve(process.argv[2])
if (!pkg) throw new Error('usage: DURABLY_BIN=... node demo_page.mjs PACKAGE_DIR [--screenshot PATH]')
const shotAt = process.argv.indexOf('--screenshot')
const screenshot = shotAt > 0 ? resolve(process.argv[shotAt + 1]) : null
const WAIT_MS = 60_000
const timer = watchdog('demo page test', 240_000)

const dir = mkdtempSync(join(tmpdir(), 'durably-demo-page-'))
let demo
let context
try {
  demo = await start(['demo', '--db', join(dir, 'demo.sqlite'), '--browser-package', pkg])
  context = await chromium.launchPersistentContext(join(dir, 'profile'), {
    executablePath,
    headless: true,
    viewport: { width: 1000, height: 640 },
    colorScheme: 'light',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  })
  const page = context.pages()[0] ?? (await context.newPage())
  const pageErrors = []
  page.on('pageerror', (error) => pageErrors.push(String(error)))
  page.on('response', (response) => {
    if (response.status() >= 400) pageErrors.push(`${response.status()} ${response.url()}`)
  })
  page.on('console', (message) => {
    if (message.type() === 'error') pageErrors.push(message.text())
  })

  const until = waiter(page, pageErrors, WAIT_MS)
  const ready = () => until('the engine to start', () => document.getElementById('engine')?.dataset.ready === 'true')
  /** The rows of the runs table, newest first: { id, job, status, result, logs, progress }. */
  const rows = () =>
    page.$$eval('#runs tr', (trs) =>
      trs.map((tr) => ({
        ...Object.fromEntries([...tr.children].map((td) => [td.className, td.innerText.trim()])),
        id: tr.dataset.run, // the whole id (the first cell shows its end)
      })),
    )
  /** Triggers from a form; resolves with the new run's id (the newest row). */
  async function run(button, fields) {
    const before = new Set((await rows()).map((row) => row.id))
    for (const [id, value] of Object.entries(fields)) await page.fill(`#${id}`, String(value))
    await page.click(`#${button}`)
    await until(`a new run from #${button}`, (ids) => [...document.querySelectorAll('#runs tr')].some((tr) => !ids.includes(tr.dataset.run)), [...before])
    return (await rows()).find((row) => !before.has(row.id)).id
  }
  const settled = (id, status) =>
    until(`run ${id} to be ${status}`, ([id, status]) => document.querySelector(`#runs tr[data-run="${id}"]`)?.dataset.status === status, [id, status])
  const rowOf = async (id) => (await rows()).find((row) => row.id === id)

  // 1. Runs to their end.
  await page.goto(`${demo.origin}/browser`)
  await ready()
  const flakyId = await run('run-flaky', { 'flaky-fail': 1 })
  const failedId = await run('run-steps', { 'steps-count': 3, 'steps-ms': 0, 'steps-fail': 2 })
  const stepsId = await run('run-steps', { 'steps-count': 4, 'steps-ms': 150, 'steps-fail': '' })
  await settled(stepsId, 'completed')
  await until('the last log of the steps run', (id) => document.querySelector(`#runs tr[data-run="${id}"] .logs`)?.innerText === 'step 4 done', stepsId)
  let row = await rowOf(stepsId)
  check(row.job === 'steps' && row.result === '{"sum":10}' && row.progress === 'step 4/4', `steps row: ${JSON.stringify(row)}`)
  await settled(failedId, 'failed')
  row = await rowOf(failedId)
  check(row.result === 'failed at step 2', `failing steps row: ${JSON.stringify(row)}`)
  await settled(flakyId, 'completed')
  row = await rowOf(flakyId)
  check(row.job === 'flaky' && row.result === '{"attempts":2}', `flaky row: ${JSON.stringify(row)}`)
  if (screenshot) {
    const height = await page.evaluate(() => Math.ceil(document.querySelector('table').getBoundingClientRect().bottom) + 24)
    await page.screenshot({ path: screenshot, clip: { x: 0, y: 0, width: 1000, height: Math.min(height, 640) } })
  }

  // 2. A reload mid-run: the run resumes in the new worker (after its 2 s lease) and completes.
  const cutId = await run('run-steps', { 'steps-count': 4, 'steps-ms': 600, 'steps-fail': '' })
  await until(`run ${cutId} past step 1`, (id) => /step [12]\/4/.test(document.querySelector(`#runs tr[data-run="${id}"] .progress`)?.innerText ?? ''), cutId)
  await page.reload()
  await ready()
  await settled(cutId, 'completed')
  row = await rowOf(cutId)
  check(row.result === '{"sum":10}', `resumed run: ${JSON.stringify(row)}`)
  const run2 = await page.evaluate((id) => window.durably.getRun(id), cutId)
  check(run2.status === 'completed' && run2.output.sum === 10, `getRun after the reload: ${JSON.stringify(run2)}`)

  // 2b. A second tab while this one holds the database: its worker waits (openTimeoutMs, 10 s),
  // then the page says the pool is held by another worker and what to do.
  const second = await context.newPage()
  await second.goto(`${demo.origin}/browser`)
  try {
    await second.waitForFunction(() => document.getElementById('engine')?.className === 'failed', null, { timeout: 30_000, polling: 100 })
  } catch (error) {
    throw new Error(`the second tab did not report the held database within 30 s: ${error.message.split('\n')[0]}\npage:\n${await second.locator('body').innerText()}`)
  }
  const refused = await second.locator('#engine').innerText()
  check(
    /held by another worker of this site \(another tab.*close the other tab/.test(refused),
    `the second tab's message: ${refused}`,
  )
  await second.close()
  console.log(`a second tab: ${refused}`)

  // 3a. Unsubscribing: the worker forwards a type while a listener of it remains on the page.
  const forwarded = await page.evaluate(async () => {
    const client = window.durably
    const seen = []
    window.durablyWorker.addEventListener('message', (message) => {
      if (message.data?.durably === 'event') seen.push(message.data.type)
    })
    const runOnce = async () => {
      let done
      const completed = new Promise((resolve) => (done = resolve))
      const { id } = await client.trigger('steps', { count: 2 })
      const off = client.on('run:complete', (event) => event.runId === id && done())
      if ((await client.getRun(id)).status === 'completed') done()
      await completed
      off()
      const count = seen.filter((type) => type === 'step:complete').length
      seen.length = 0
      return count
    }
    const first = client.on('step:complete', () => {})
    const second = client.on('step:complete', () => {})
    const both = await runOnce()
    first()
    const one = await runOnce()
    second()
    const none = await runOnce()
    const again = client.on('step:complete', () => {})
    const resubscribed = await runOnce()
    again()
    return { both, one, none, resubscribed }
  })
  check(
    forwarded.both === 2 && forwarded.one === 2 && forwarded.none === 0 && forwarded.resubscribed === 2,
    `step:complete events forwarded by the worker (2 steps a run): ${JSON.stringify(forwarded)}`,
  )

  // 3b. A worker that fails while calls wait: they reject with the reason, later calls too.
  const failure = await page.evaluate(async () => {
    const { connectDurably } = await import('/browser/pkg/client.js')
    const script = `postMessage({ durably: 'ready' })
      addEventListener('message', (m) => { if (m.data.method === 'getRuns') setTimeout(() => { throw new Error('engine trapped') }) })`
    const worker = new Worker(URL.createObjectURL(new Blob([script], { type: 'text/javascript' })))
    const client = await connectDurably(worker)
    const waiting = client.getRuns().then(() => 'resolved', (error) => error.message)
    const bounded = new Promise((resolve) => setTimeout(() => resolve('still waiting after 10 s'), 10_000))
    const first = await Promise.race([waiting, bounded])
    const later = await client.getRun('x').then(() => 'resolved', (error) => error.message)
    worker.terminate()
    return { first, later }
  })
  check(/^the durably worker failed: .*engine trapped.*; getRuns got no answer$/.test(failure.first), `the waiting call: ${failure.first}`)
  check(/^the durably worker failed: .*engine trapped.*; getRun was not sent$/.test(failure.later), `a later call: ${failure.later}`)
  // The failing test worker's uncaught error is logged by the browser; nothing else may be.
  const unexpected = pageErrors.filter((error) => !error.includes('engine trapped'))
  check(unexpected.length === 0, `page errors: ${JSON.stringify(unexpected)}`)
  console.log('demo page test passed')
} finally {
  clearTimeout(timer)
  await context?.close().catch(() => {})
  if (demo) await stop(demo.child)
  rmSync(dir, { recursive: true, force: true })
}
