// Overview and timeline test: starts `durably demo` on a free loopback port, runs a known
// workload through the HTTP API, and drives the dashboard in headless Debian chromium through
// playwright-core:
//   1. the overview is the first screen: counts per status, the runs ended per bucket, the
//      failure rate, per-job counts and percentiles, all from the known workload;
//   2. the oldest pending run is linked, and the link opens it;
//   3. the last-day toggle redraws the charts in 24 hour buckets;
//   4. a run's timeline: bars for completed steps and a failed attempt (flaky, retried), a
//      failed step (steps with failAt), a durable sleep still waiting (nap, open bar) and a
//      step executing now (sleep, open bar that grows);
//   5. the Runs tab still lists the runs, with duration, error and date columns, and finds a
//      run by a prefix of its id;
//   6. at phone width the overview fits the screen.
//
// Env: DURABLY_BIN (the `durably` binary, required), CHROMIUM (default /usr/bin/chromium),
// SCREENSHOTS (directory for PNGs, optional), README_SHOT (optional PNG path for the README).
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  check,
  openPage,
  shot,
  shots,
  sleep,
  start,
  stop,
  watchdog,
} from './support.mjs'

const timer = watchdog('overview test', 120_000)

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'durably-overview-'))
  const { child, origin } = await start(['demo', '--db', join(dir, 'demo.sqlite')])
  const api = `${origin}/api/durably`
  const trigger = async (jobName, input, extra = {}) => {
    const response = await fetch(`${api}/trigger`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jobName, input, ...extra }),
    })
    check(response.ok, `trigger ${jobName}: ${response.status} ${await response.clone().text()}`)
    return (await response.json()).runId
  }
  const status = async (id) => (await (await fetch(`${api}/run?runId=${id}`)).json()).status
  const until = async (id, wanted) => {
    for (let i = 0; i < 300; i++) {
      const now = await status(id)
      if (now === wanted) return
      await sleep(100)
    }
    throw new Error(`run ${id} never became ${wanted} (is ${await status(id)})`)
  }
  let browser
  let page
  try {
    // the known workload: 3 echo and 1 flaky (retried once) complete, 1 steps fails at its
    // second step, 1 nap sleeps durably (waiting), 1 sleep runs (leased) and holds the
    // concurrency key another sleep waits for (pending)
    const echoes = [await trigger('echo', { value: 1 }), await trigger('echo', { value: 2 }), await trigger('echo', { value: 3 })]
    const flaky = await trigger('flaky', { failTimes: 1, maxAttempts: 3, delayMs: 300 })
    const failing = await trigger('steps', { count: 3, stepMs: 150, failAt: 2 })
    const nap = await trigger('nap', { ms: 600000 })
    const running = await trigger('sleep', { ms: 600000 }, { concurrencyKey: 'k' })
    await until(running, 'leased')
    const queued = await trigger('sleep', { ms: 1000 }, { concurrencyKey: 'k' })
    for (const id of echoes) await until(id, 'completed')
    await until(flaky, 'completed')
    await until(failing, 'failed')
    await until(nap, 'waiting')
    check((await status(queued)) === 'pending', 'the second sleep waits for the key')

    const opened = await openPage(1280)
    browser = opened.browser
    page = opened.page
    const pageErrors = opened.pageErrors

    // 1. the overview is the first screen
    await page.goto(`${origin}/`)
    await page.waitForSelector('#overview:not([hidden]) [data-testid="ov-count"]')
    check(await page.isHidden('[data-testid="runs-section"]'), 'the runs list is behind its tab')
    check((await page.getAttribute('[data-testid="tab-overview"]', 'aria-selected')) === 'true', 'overview tab selected')
    const counts = await page.$$eval('[data-testid="ov-count"]', (tiles) => Object.fromEntries(tiles.map((t) => [t.dataset.status, Number(t.dataset.count)])))
    check(
      JSON.stringify(counts) === JSON.stringify({ pending: 1, leased: 1, waiting: 1, completed: 4, failed: 1, cancelled: 0 }),
      `counts per status ${JSON.stringify(counts)}`,
    )
    const throughput = await page.$eval('[data-testid="ov-throughput"] svg', (s) => ({ ...s.dataset, bars: s.querySelectorAll('rect.completed, rect.failed').length }))
    check(throughput.completed === '4' && throughput.failed === '1' && throughput.buckets === '60', `throughput chart ${JSON.stringify(throughput)}`)
    check(throughput.bars >= 2, `throughput bars drawn ${JSON.stringify(throughput)}`)
    const rate = await page.$eval('[data-testid="ov-failure"] svg', (s) => s.dataset.rate)
    check(Number(rate) === 0.2, `failure rate ${rate}`)
    const jobs = await page.$$eval('#ov-jobs tr', (trs) =>
      trs.map((tr) => ({
        job: tr.dataset.job,
        completed: Number(tr.dataset.completed),
        failed: Number(tr.dataset.failed),
        latency: tr.querySelector('[data-testid="ov-latency"] .pct') !== null,
        duration: Number(tr.querySelector('[data-testid="ov-duration"] .pct')?.dataset.p95 ?? -1),
      })),
    )
    check(
      JSON.stringify(jobs.map((j) => [j.job, j.completed, j.failed])) === JSON.stringify([['echo', 3, 0], ['flaky', 1, 0], ['steps', 0, 1]]),
      `jobs ${JSON.stringify(jobs)}`,
    )
    check(jobs.every((j) => j.latency && j.duration >= 0), `percentiles drawn for every job ${JSON.stringify(jobs)}`)
    // flaky waited 300 ms between its attempts: its duration shows it
    check(jobs[1].duration >= 300, `flaky's duration includes its retry delay ${JSON.stringify(jobs[1])}`)
    check((await page.getAttribute('[data-testid="ov-oldest"]', 'data-run-id')) === queued, 'oldest pending run')
    await page.evaluate(() => document.activeElement?.blur())
    await shot(page, 'overview.png')
    if (process.env.README_SHOT) await page.screenshot({ path: process.env.README_SHOT })

    // live: a run ending moves the counts without a reload
    const another = await trigger('echo', { value: 4 })
    await until(another, 'completed')
    await page.waitForFunction(() => document.querySelector('[data-testid="ov-count"][data-status="completed"]')?.dataset.count === '5', null, { timeout: 10_000 })

    // 3. the last day, by hour
    await page.click('[data-testid="window-24h"]')
    await page.waitForFunction(() => document.querySelector('[data-testid="ov-throughput"] svg')?.dataset.buckets === '24')
    check((await page.$eval('[data-testid="ov-throughput"] svg', (s) => s.dataset.completed)) === '5', 'last day counts')
    check(new URL(page.url()).searchParams.get('window') === '24h', `window in URL ${page.url()}`)
    await shot(page, 'overview-day.png')

    // 2. the oldest pending run's link opens it
    await page.click('[data-testid="ov-oldest-run"]')
    await page.waitForFunction((id) => document.querySelector('#detail-id')?.textContent === id, queued)
    check(new URL(page.url()).searchParams.get('run') === queued, `run in URL ${page.url()}`)
    check(await page.isVisible('[data-testid="runs-section"]'), 'the run opens beside the runs list')
    await page.waitForSelector('#detail-timeline [data-kind="queue"]')

    const openTimeline = async (id) => {
      await page.goto(`${origin}/?run=${id}`)
      await page.waitForFunction((id) => document.querySelector('#detail-id')?.textContent === id, id)
      await page.waitForSelector('#detail-timeline .tl-row[data-testid="timeline-row"]')
      return () => page.$$eval('#detail-timeline [data-testid="timeline-row"]', (rows) => rows.map((r) => ({ kind: r.dataset.kind, status: r.dataset.status, label: r.querySelector('.tl-label').textContent, open: r.querySelector('.tl-bar').classList.contains('open'), width: r.querySelector('.tl-bar').getBoundingClientRect().width })))
    }

    // 4. timelines: a failed attempt then its retry; a failed step after a completed one
    let rows = await (await openTimeline(flaky))()
    let attempts = rows.filter((r) => r.kind === 'attempt')
    check(JSON.stringify(attempts.map((a) => [a.label, a.status])) === JSON.stringify([['flaky', 'failed'], ['flaky #2', 'completed']]), `flaky timeline ${JSON.stringify(rows)}`)
    check(rows.some((r) => r.kind === 'queue'), `flaky queued row ${JSON.stringify(rows)}`)
    await shot(page, 'timeline-retry.png')
    rows = await (await openTimeline(failing))()
    attempts = rows.filter((r) => r.kind === 'attempt')
    check(JSON.stringify(attempts.map((a) => [a.label, a.status])) === JSON.stringify([['step-1', 'completed'], ['step-2', 'failed']]), `steps timeline ${JSON.stringify(rows)}`)
    check(attempts.every((a) => a.width >= 2), `bars drawn ${JSON.stringify(attempts)}`)
    // a durable sleep still waiting: an open wait bar
    rows = await (await openTimeline(nap))()
    const waits = rows.filter((r) => r.kind === 'wait')
    check(waits.length === 1 && waits[0].status === 'waiting' && waits[0].open && waits[0].label.startsWith('sleep'), `nap timeline ${JSON.stringify(rows)}`)
    // the step executing now: an open bar that grows
    const read = await openTimeline(running)
    rows = await read()
    const now = rows.filter((r) => r.kind === 'attempt')
    check(now.length === 1 && now[0].status === 'running' && now[0].open, `sleep timeline ${JSON.stringify(rows)}`)
    const before = await page.$eval('#detail-timeline .tl-bar.running', (b) => b.parentElement.parentElement.querySelector('.tl-dur').textContent)
    await page.waitForFunction((before) => document.querySelector('#detail-timeline .tl-bar.running')?.parentElement.parentElement.querySelector('.tl-dur').textContent !== before, before, { timeout: 5_000 })
    await page.evaluate(() => document.activeElement?.blur())
    await shot(page, 'timeline-running.png')
    const fits = await page.$eval('.runs', (box) => box.scrollWidth <= box.clientWidth + 1)
    check(fits, 'the runs table fits beside an open run at 1280 px')

    // 5. the runs list is a tab away
    await page.click('[data-testid="detail-close"]')
    await page.click('[data-testid="tab-runs"]')
    await page.waitForSelector(`#runs tr[data-run-id="${flaky}"]`)
    check(new URL(page.url()).searchParams.get('view') === 'runs', `view in URL ${page.url()}`)
    // the runs list's duration, error and date columns
    const cells = (id) => page.$eval(`#runs tr[data-run-id="${id}"]`, (tr) => ({ took: tr.querySelector('[data-testid="took"]').textContent, error: tr.querySelector('[data-testid="run-error"]').textContent, created: tr.querySelector('td.created').textContent }))
    const failedCells = await cells(failing)
    check(failedCells.error.length > 0 && /\d+ ms|s$/.test(failedCells.took), `failed run's cells ${JSON.stringify(failedCells)}`)
    const flakyCells = await cells(flaky)
    check(flakyCells.error === '' && /ms|s/.test(flakyCells.took), `completed run's cells ${JSON.stringify(flakyCells)}`)
    check(/[A-Za-z]{3}/.test(flakyCells.created) && /\d\d:\d\d:\d\d/.test(flakyCells.created), `a date with the time: ${flakyCells.created}`)
    check((await cells(running)).took.endsWith('…'), 'a running run counts on')
    // search by run id (a prefix), kept in the URL
    await page.fill('#filter-id', flaky.slice(0, -2))
    await page.dispatchEvent('#filter-id', 'change')
    await page.waitForFunction((id) => {
      const trs = [...document.querySelectorAll('#runs tr')]
      return trs.length === 1 && trs[0].dataset.runId === id
    }, flaky)
    check(new URL(page.url()).searchParams.get('id') === flaky.slice(0, -2), `id in URL ${page.url()}`)
    await shot(page, 'runs-search.png')
    // no match: the empty state says so and offers to clear the filters
    await page.fill('#filter-id', 'no-such-run')
    await page.dispatchEvent('#filter-id', 'change')
    await page.waitForSelector('[data-testid="runs-empty"][data-kind="filtered"]:not([hidden])')
    await page.click('[data-testid="runs-empty"] button')
    await page.waitForFunction(() => document.querySelectorAll('#runs tr').length > 1)
    check((await page.inputValue('#filter-id')) === '', 'the filters are cleared')
    await page.click('[data-testid="tab-overview"]')
    await page.waitForSelector('#overview:not([hidden])')

    // phone width: the overview stacks, without horizontal scrolling
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true })
    const small = await phone.newPage()
    small.on('pageerror', (error) => pageErrors.push(String(error)))
    await small.goto(`${origin}/`)
    await small.waitForSelector('#overview:not([hidden]) [data-testid="ov-throughput"] svg')
    const width = await small.evaluate(() => document.documentElement.scrollWidth)
    check(width <= 390, `no horizontal scrolling at phone width (${width}px)`)
    await shot(small, 'phone-overview.png')
    await phone.close()

    check(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`)
    console.log(`overview test: counts ${JSON.stringify(counts)}; jobs ${JSON.stringify(jobs.map((j) => j.job))}`)
  } catch (error) {
    if (page && shots) await page.screenshot({ path: join(shots, 'overview-failure.png') }).catch(() => {})
    throw error
  } finally {
    if (browser) await browser.close()
    await stop(child)
    rmSync(dir, { recursive: true, force: true })
  }
}

main().then(
  () => {
    clearTimeout(timer)
    console.log('overview test passed')
  },
  (error) => {
    console.error(error)
    process.exit(1)
  },
)
