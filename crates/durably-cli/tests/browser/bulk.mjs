// Bulk actions and the time range of the runs list: starts `durably demo` on a free loopback
// port, seeds runs through the HTTP API (finished ones and pending, leased and waiting ones, two
// of them made three days old by writing their created_at with Debian's sqlite3), and drives
// the dashboard in headless Debian chromium through playwright-core:
//   1. the time range: "last 24 hours" hides the old runs (in the page and by the API's
//      createdSince), "any time" shows them again; kept in the URL;
//   2. "Select all matching" selects every run of the filter, beyond the page shown; Cancel asks
//      how many runs and how many are skipped, cancels exactly the unfinished recent ones and
//      skips the finished ones (not the old waiting runs outside the range);
//   3. the page's checkbox selects the cancelled runs shown; Retrigger starts one new run each;
//   4. Delete on everything matching deletes the finished runs and skips the unfinished ones;
//   5. `durably serve` (no job definitions) on the same database: the runs left are cancelled,
//      then their retrigger fails (501) and is counted as failed, with the server's message;
// each result summary (done / skipped / failed) checked in the page and the runs through the
// API. Screenshots of the confirmation dialogs into $SCREENSHOTS.
//
// Env: DURABLY_BIN (the `durably` binary, required), CHROMIUM (default /usr/bin/chromium),
// SCREENSHOTS (directory for PNGs, optional), SQLITE3 (default sqlite3 on PATH).
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { check, openPage, shot, shots, sleep, start, stop, watchdog } from './support.mjs'

const timer = watchdog('bulk test', 150_000)
const sqlite3 = process.env.SQLITE3 || 'sqlite3'

async function main() {
  try {
    execFileSync(sqlite3, ['-version'])
  } catch (error) {
    throw new Error(`bulk test needs the sqlite3 command (Debian's sqlite3 package; or SQLITE3=path): ${error.message}`)
  }
  const dir = mkdtempSync(join(tmpdir(), 'durably-bulk-'))
  const db = join(dir, 'demo.sqlite')
  const { child, origin } = await start(['demo', '--db', db])
  const api = `${origin}/api/durably`
  let serve
  const get = async (path) => {
    const response = await fetch(`${api}${path}`)
    check(response.ok, `GET ${path}: ${response.status} ${await response.clone().text()}`)
    return response.json()
  }
  const trigger = async (jobName, input, extra = {}) => {
    const response = await fetch(`${api}/trigger`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jobName, input, ...extra }),
    })
    check(response.ok, `trigger ${jobName}: ${response.status} ${await response.clone().text()}`)
    return (await response.json()).runId
  }
  const status = async (id) => (await get(`/run?runId=${id}`)).status
  const until = async (id, wanted) => {
    for (let i = 0; i < 300; i++) {
      const now = await status(id)
      if (wanted.includes(now)) return now
      await sleep(100)
    }
    throw new Error(`run ${id} never became ${wanted} (is ${await status(id)})`)
  }
  /** id -> status of every run, through the API. */
  const everyRun = async () => Object.fromEntries((await get('/runs')).map((r) => [r.id, r.status]))
  const sorted = (ids) => [...ids].sort()
  let browser
  let page
  try {
    // two runs waiting on a durable sleep, made three days old
    const old = [await trigger('nap', { ms: 600000 }), await trigger('nap', { ms: 600000 })]
    for (const id of old) await until(id, ['waiting'])
    const threeDaysAgo = new Date(Date.now() - 3 * 86_400_000).toISOString()
    execFileSync(sqlite3, ['-cmd', '.timeout 10000', db, `UPDATE durably_runs SET created_at = '${threeDaysAgo}' WHERE id IN ('${old.join("','")}')`])
    // recent: 23 completed, 1 failed, 2 waiting, 1 leased, 1 pending (28, more than a page)
    const echoes = []
    for (let i = 0; i < 23; i++) echoes.push(await trigger('echo', { value: i }))
    const failing = await trigger('steps', { count: 2, stepMs: 10, failAt: 2 })
    const naps = [await trigger('nap', { ms: 600000 }), await trigger('nap', { ms: 600000 })]
    const running = await trigger('sleep', { ms: 600000 }, { concurrencyKey: 'k' })
    await until(running, ['leased'])
    const queued = await trigger('sleep', { ms: 600000 }, { concurrencyKey: 'k' })
    for (const id of echoes) await until(id, ['completed'])
    await until(failing, ['failed'])
    for (const id of naps) await until(id, ['waiting'])
    check((await status(queued)) === 'pending', 'the second sleep waits for the key')
    const finished = [...echoes, failing]
    const unfinished = [...naps, running, queued]
    const since = new Date(Date.now() - 86_400_000).toISOString()
    const recentNaps = (await get(`/runs?jobName=nap&createdSince=${since}`)).map((r) => r.id)
    check(JSON.stringify(sorted(recentNaps)) === JSON.stringify(sorted(naps)), `API createdSince keeps the recent naps ${recentNaps}`)

    const opened = await openPage(1280)
    browser = opened.browser
    page = opened.page
    const pageErrors = opened.pageErrors
    const listed = () => page.$$eval('#runs tr', (trs) => trs.map((tr) => tr.dataset.runId))
    const waitListed = async (expected, what) => {
      try {
        await page.waitForFunction(
          (ids) => {
            const shown = [...document.querySelectorAll('#runs tr')].map((tr) => tr.dataset.runId).sort()
            return JSON.stringify(shown) === JSON.stringify(ids)
          },
          sorted(expected),
          { timeout: 10_000 },
        )
      } catch {
        throw new Error(`${what}: listed ${JSON.stringify(sorted(await listed()))}, expected ${JSON.stringify(sorted(expected))}`)
      }
    }
    const filter = async (changes) => {
      if ('range' in changes) await page.selectOption('#filter-range', changes.range)
      if ('job' in changes) await page.selectOption('#filter-job', changes.job)
      if ('status' in changes) {
        for (const box of await page.$$('#filter-status input')) {
          const wanted = changes.status.includes(await box.getAttribute('value'))
          if ((await box.isChecked()) !== wanted) await box.click()
        }
      }
    }
    /** Clicks a bulk action, checks its question, screenshots it and confirms. */
    const confirmBulk = async (kind, question, screenshot) => {
      await page.click(`[data-testid="bulk-${kind}"]`)
      await page.waitForSelector(`#confirm[open][data-kind="bulk-${kind}"]`)
      const text = await page.textContent('#confirm-text')
      check(question.every((part) => text.includes(part)), `${kind} question: ${text}`)
      await shot(page, screenshot)
      await page.click('[data-testid="confirm-yes"]')
      await page.waitForSelector(`[data-testid="bulk-result"][data-action="${kind}"]`, { timeout: 30_000 })
      return page.$eval('[data-testid="bulk-result"]', (p) => ({ done: Number(p.dataset.done), skipped: Number(p.dataset.skipped), failed: Number(p.dataset.failed), text: p.textContent }))
    }

    // 1. the time range: the old naps go with "last 24 hours", come back with "any time"
    await page.goto(`${origin}/?view=runs&job=nap`)
    await waitListed([...old, ...naps], 'every nap')
    await filter({ range: '24h' })
    await waitListed(naps, 'the naps of the last 24 hours')
    check(new URL(page.url()).searchParams.get('range') === '24h', `range in URL ${page.url()}`)
    await page.reload()
    await waitListed(naps, 'the range kept across a reload')
    check((await page.inputValue('#filter-range')) === '24h', 'the range select shows it')
    await shot(page, 'runs-range.png')
    await filter({ range: '' })
    await waitListed([...old, ...naps], 'every nap again')

    // 2. cancel every run of the last 24 hours: beyond the page, the finished ones skipped
    await filter({ job: '', range: '24h' })
    await page.waitForFunction(() => document.querySelectorAll('#runs tr').length === 20 && !document.querySelector('#load-more').hidden)
    await page.click('[data-testid="bulk-all"]')
    await page.waitForSelector('[data-testid="bulk-count"][data-scope="all"][data-count="28"]')
    check((await page.$$eval('#runs input[data-testid="pick"]', (boxes) => boxes.every((b) => b.checked))) === true, 'the page shows its runs ticked')
    let result = await confirmBulk('cancel', ['Cancel 28 runs?', '4 pending, leased or waiting runs will be cancelled', '24 runs already finished are skipped'], 'bulk-confirm-cancel.png')
    check(result.done === 4 && result.skipped === 24 && result.failed === 0, `cancel result ${JSON.stringify(result)}`)
    let runs = await everyRun()
    for (const id of unfinished) check(runs[id] === 'cancelled', `${id} cancelled (${runs[id]})`)
    for (const id of old) check(runs[id] === 'waiting', `old ${id} outside the range is still waiting (${runs[id]})`)
    for (const id of echoes) check(runs[id] === 'completed', `${id} still completed (${runs[id]})`)
    check(runs[failing] === 'failed', 'the failed run still failed')
    check(Object.keys(runs).length === 30, `no run added or lost ${Object.keys(runs).length}`)
    await shot(page, 'bulk-cancel-result.png')

    // 3. retrigger the cancelled runs, picked with the page's checkbox
    await filter({ status: ['cancelled'] })
    await waitListed(unfinished, 'the cancelled runs')
    await page.check('[data-testid="pick-page"]')
    await page.waitForSelector('[data-testid="bulk-count"][data-scope="page"][data-count="4"]')
    result = await confirmBulk('retrigger', ['Retrigger 4 runs?', '4 finished runs each get a new run with the same input'], 'bulk-confirm-retrigger.png')
    check(result.done === 4 && result.skipped === 0 && result.failed === 0, `retrigger result ${JSON.stringify(result)}`)
    runs = await everyRun()
    const retriggered = Object.keys(runs).filter((id) => !(id in Object.fromEntries([...old, ...finished, ...unfinished].map((i) => [i, 1]))))
    check(retriggered.length === 4, `4 new runs ${JSON.stringify(retriggered)}`)
    const jobsOf = async (ids) => sorted(await Promise.all(ids.map(async (id) => (await get(`/run?runId=${id}`)).jobName)))
    check(JSON.stringify(await jobsOf(retriggered)) === JSON.stringify(['nap', 'nap', 'sleep', 'sleep']), 'the new runs are of the same jobs')
    for (const id of unfinished) check(runs[id] === 'cancelled', `${id} is still cancelled`)
    for (const id of retriggered) await until(id, ['pending', 'leased', 'waiting'])

    // 4. delete everything of the last 24 hours: the finished deleted, the new ones skipped
    await filter({ status: [] })
    await page.waitForFunction(() => document.querySelectorAll('#runs tr').length === 20)
    await page.click('[data-testid="bulk-all"]')
    await page.waitForSelector('[data-testid="bulk-count"][data-scope="all"][data-count="32"]')
    result = await confirmBulk('delete', ['Delete 32 runs?', '28 finished runs are deleted', 'cannot be undone', '4 runs not finished'], 'bulk-confirm-delete.png')
    check(result.done === 28 && result.skipped === 4 && result.failed === 0, `delete result ${JSON.stringify(result)}`)
    runs = await everyRun()
    check(JSON.stringify(sorted(Object.keys(runs))) === JSON.stringify(sorted([...old, ...retriggered])), `left: the old and the new runs ${JSON.stringify(runs)}`)
    await waitListed(retriggered, 'the page lists what is left of the last 24 hours')
    await shot(page, 'bulk-delete-result.png')

    // 5. `durably serve` on the same database cannot retrigger: failures are counted
    const served = await start(['serve', '--db', db])
    serve = served.child
    await page.goto(`${served.origin}/?view=runs`)
    await waitListed([...old, ...retriggered], 'serve lists the runs left')
    await page.click('[data-testid="bulk-all"]')
    await page.waitForSelector('[data-testid="bulk-count"][data-scope="all"][data-count="6"]')
    result = await confirmBulk('cancel', ['Cancel 6 runs?', '6 pending, leased or waiting runs will be cancelled'], 'bulk-confirm-cancel-serve.png')
    check(result.done === 6 && result.skipped === 0 && result.failed === 0, `cancel on serve ${JSON.stringify(result)}`)
    await page.waitForFunction(() => [...document.querySelectorAll('#runs tr')].every((tr) => tr.dataset.status === 'cancelled'))
    await page.click('[data-testid="bulk-all"]')
    await page.waitForSelector('[data-testid="bulk-count"][data-scope="all"][data-count="6"]')
    result = await confirmBulk('retrigger', ['Retrigger 6 runs?'], 'bulk-confirm-retrigger-serve.png')
    check(result.done === 0 && result.skipped === 0 && result.failed === 6, `retrigger on serve ${JSON.stringify(result)}`)
    check(result.text.includes('HTTP 501') && result.text.includes('no job definitions'), `the server's message: ${result.text}`)
    runs = await everyRun()
    check(Object.keys(runs).length === 6 && Object.values(runs).every((s) => s === 'cancelled'), `no run added: ${JSON.stringify(runs)}`)
    await shot(page, 'bulk-failed-result.png')

    check(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`)
    console.log(`bulk test: cancelled 4 of 28, retriggered 4, deleted 28 of 32; ${old.length} old runs untouched`)
  } catch (error) {
    if (page && shots) await page.screenshot({ path: join(shots, 'bulk-failure.png') }).catch(() => {})
    throw error
  } finally {
    if (browser) await browser.close()
    if (serve) await stop(serve)
    await stop(child)
    rmSync(dir, { recursive: true, force: true })
  }
}

main().then(
  () => {
    clearTimeout(timer)
    console.log('bulk test passed')
  },
  (error) => {
    console.error(error)
    process.exit(1)
  },
)
