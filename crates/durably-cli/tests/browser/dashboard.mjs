// Dashboard test: starts `durably demo` on a free loopback port and drives its dashboard (the
// page at `/`, durably::http::dashboard) in headless Debian chromium through playwright-core:
//   1. trigger `steps` from the form and watch its progress advance live in the runs table;
//   2. open the run's detail (output, steps, logs);
//   3. invalid input shows the server's 400 message;
//   4. trigger `sleep`, open it, cancel it (with confirmation);
//   5. filter by status and by job, reflected in the URL and kept across a reload;
//   6. screenshots (laptop and phone width) into $SCREENSHOTS;
//   7. "Load more" pages through the runs;
//   7b. a waiting `approval` run signalled from its detail's wait form;
//   7c. child runs: a `parent` run's page lists its children (status, link, count), a child's
//      page links to its parent, a run without either shows no tree;
//   8. `durably serve` on the same database: the form says it has no jobs, retrigger's 501
//      message is shown.
//
// Env: DURABLY_BIN (the `durably` binary, required), CHROMIUM (default /usr/bin/chromium),
// SCREENSHOTS (directory for PNGs, optional). The runs list is the `Runs` tab (`?view=runs`); the
// overview, the first screen, and the run timeline are tested by overview.mjs.
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

const timer = watchdog('dashboard test', 150_000)

async function trigger(page, job, fields, labels = '') {
  await page.selectOption('#trigger-job', job)
  for (const [name, value] of Object.entries(fields)) await page.fill(`#input-${name}`, String(value))
  await page.fill('#trigger-labels', labels)
  const before = await page.evaluate(() => document.querySelector('[data-testid="trigger-run"]')?.textContent ?? '')
  await page.click('[data-testid="trigger-submit"]')
  await page.waitForFunction(
    (before) => {
      const link = document.querySelector('#trigger-ok:not([hidden]) [data-testid="trigger-run"]')
      const error = document.querySelector('#trigger-error:not([hidden])')
      if (error) throw new Error(`trigger failed: ${error.textContent}`)
      return link && link.textContent !== before
    },
    before,
  )
  return (await page.textContent('[data-testid="trigger-run"]')).trim()
}

const rowStatus = (page, id) =>
  page.evaluate((id) => document.querySelector(`#runs tr[data-run-id="${id}"]`)?.dataset.status ?? null, id)

async function waitDetailStatus(page, status, timeout = 30_000) {
  await page.waitForFunction((s) => document.querySelector('#detail-status')?.textContent === s, status, { timeout })
}

async function rows(page) {
  return page.$$eval('#runs tr', (trs) => trs.map((tr) => ({ id: tr.dataset.runId, job: tr.dataset.job, status: tr.dataset.status })))
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'durably-dashboard-'))
  const db = join(dir, 'demo.sqlite')
  const { child, origin } = await start(['demo', '--db', db])
  let serve
  const api = `${origin}/api/durably`
  let browser
  let page
  try {
    const opened = await openPage(1360)
    browser = opened.browser
    page = opened.page
    const pageErrors = opened.pageErrors
    await page.goto(`${origin}/?view=runs`)
    await page.waitForSelector('#trigger-job option[value="steps"]', { state: 'attached' })
    await page.waitForSelector('#live.on')

    // 1. trigger `steps` from the form; progress advances live in the table
    const stepsId = await trigger(page, 'steps', { count: 5, stepMs: 600 })
    const row = `#runs tr[data-run-id="${stepsId}"]`
    await page.waitForSelector(row)
    const seen = []
    const deadline = Date.now() + 30_000
    let midShot = false
    while (Date.now() < deadline) {
      const sample = await page.evaluate((sel) => {
        const tr = document.querySelector(sel)
        return tr ? { status: tr.dataset.status, progress: tr.querySelector('[data-testid="progress"]')?.textContent ?? '' } : null
      }, row)
      if (sample && (seen.length === 0 || seen.at(-1).progress !== sample.progress || seen.at(-1).status !== sample.status)) seen.push(sample)
      if (!midShot && sample && /^[23]\/5/.test(sample.progress)) {
        midShot = true
        await shot(page, 'runs-live.png')
      }
      if (sample && sample.status === 'completed') break
      await sleep(50)
    }
    const live = [...new Set(seen.filter((s) => s.status === 'leased' && /^[1-4]\/5/.test(s.progress)).map((s) => s.progress))]
    check(live.length >= 2, `live progress in the table: ${JSON.stringify(seen)}`)
    check(seen.at(-1)?.status === 'completed', `steps run completed: ${JSON.stringify(seen)}`)

    // 2. run detail
    await page.click(`${row} td.job`)
    await waitDetailStatus(page, 'completed')
    check(new URL(page.url()).searchParams.get('run') === stepsId, `run in URL: ${page.url()}`)
    await page.waitForFunction(() => document.querySelectorAll('#detail-steps li[data-status="completed"]').length === 5)
    // one attempt per step execution, each completed
    await page.waitForFunction(() => document.querySelectorAll('#detail-attempts li[data-status="completed"]').length === 5)
    const output = JSON.parse(await page.textContent('#detail-result'))
    check(output.sum === 15, `output ${JSON.stringify(output)}`)
    check(JSON.parse(await page.textContent('#detail-input')).count === 5, 'input shown')
    const logs = await page.$$eval('#detail-logs li', (items) => items.map((li) => li.textContent))
    check(logs.length === 5 && logs[0].includes('step 1 done'), `logs ${JSON.stringify(logs)}`)
    await shot(page, 'run-detail.png')

    // 3. invalid input: the server's 400 message is shown
    await page.selectOption('#trigger-job', 'steps')
    await page.fill('#input-count', '0')
    await page.click('[data-testid="trigger-submit"]')
    await page.waitForSelector('#trigger-error:not([hidden])')
    const invalid = await page.textContent('#trigger-error')
    check(invalid.includes('count must be between 1 and 1000') && invalid.includes('400'), `invalid input message: ${invalid}`)

    // 4. cancel a `sleep` run from its detail, after confirming
    const sleepId = await trigger(page, 'sleep', { ms: 30000 }, 'team=ops')
    await page.click('[data-testid="trigger-run"]')
    await page.waitForFunction((id) => document.querySelector('#detail-id')?.textContent === id, sleepId)
    await waitDetailStatus(page, 'leased')
    await page.click('[data-testid="action-cancel"]')
    await page.waitForSelector('#confirm[open]')
    await page.click('[data-testid="confirm-yes"]')
    await waitDetailStatus(page, 'cancelled')
    const cancelled = await (await fetch(`${api}/run?runId=${sleepId}`)).json()
    check(cancelled.status === 'cancelled', `server says ${cancelled.status}`)
    await page.waitForFunction((id) => document.querySelector(`#runs tr[data-run-id="${id}"]`)?.dataset.status === 'cancelled', sleepId)
    // cancelling again is refused by the server, and the page says why
    const again = await fetch(`${api}/cancel?runId=${sleepId}`, { method: 'POST' })
    check(again.status === 409, `second cancel answers ${again.status}`)

    // 5. filters: status, job, label — in the URL, kept across a reload
    await page.click('[data-testid="detail-close"]')
    await page.check('#filter-status input[value="cancelled"]')
    await page.waitForFunction(() => [...document.querySelectorAll('#runs tr')].every((tr) => tr.dataset.status === 'cancelled'))
    let shown = await rows(page)
    check(shown.length === 1 && shown[0].id === sleepId, `status filter rows ${JSON.stringify(shown)}`)
    check(new URL(page.url()).searchParams.getAll('status').join() === 'cancelled', `status in URL ${page.url()}`)
    // several statuses: any of them
    await page.check('#filter-status input[value="completed"]')
    await page.waitForFunction(() => {
      const trs = [...document.querySelectorAll('#runs tr')]
      return trs.some((tr) => tr.dataset.status === 'completed') && trs.every((tr) => ['completed', 'cancelled'].includes(tr.dataset.status))
    })
    shown = await rows(page)
    check(shown.some((r) => r.id === sleepId) && shown.some((r) => r.id === stepsId), `two-status filter rows ${JSON.stringify(shown)}`)
    check(new URL(page.url()).searchParams.getAll('status').join() === 'completed,cancelled', `statuses in URL ${page.url()}`)
    await page.reload()
    await page.waitForSelector(`#runs tr[data-run-id="${sleepId}"]`)
    check(await page.isChecked('#filter-status input[value="completed"]'), 'status filter kept across reload')
    await page.uncheck('#filter-status input[value="completed"]')
    await page.uncheck('#filter-status input[value="cancelled"]')
    // a dropdown of the registered jobs (and of those the listed runs have)
    const choices = await page.$$eval('#filter-job option', (options) => options.map((o) => o.value))
    check(['', 'echo', 'sleep', 'steps'].every((name) => choices.includes(name)), `job choices ${JSON.stringify(choices)}`)
    await page.selectOption('#filter-job', 'steps')
    await page.waitForFunction(() => {
      const trs = [...document.querySelectorAll('#runs tr')]
      return trs.length > 0 && trs.every((tr) => tr.dataset.job === 'steps')
    })
    shown = await rows(page)
    check(shown.length === 1 && shown[0].id === stepsId, `job filter rows ${JSON.stringify(shown)}`)
    check(new URL(page.url()).searchParams.get('job') === 'steps', `job in URL ${page.url()}`)
    await page.reload()
    await page.waitForSelector(`#runs tr[data-run-id="${stepsId}"]`)
    check((await page.inputValue('#filter-job')) === 'steps', 'job filter kept across reload')
    check((await rows(page)).length === 1, 'filtered rows after reload')
    await page.goto(`${origin}/?label=team%3Dops`)
    await page.waitForSelector(`#runs tr[data-run-id="${sleepId}"]`)
    check((await rows(page)).length === 1, 'label filter')
    check((await page.inputValue('#filter-labels')) === 'team=ops', 'label filter field')

    // 6. a busier picture: runs in every state, one running with its detail open
    await page.goto(`${origin}/?view=runs`)
    await page.waitForSelector('#trigger-job option[value="steps"]', { state: 'attached' })
    await trigger(page, 'echo', {}, 'tenant=acme')
    await trigger(page, 'steps', { count: 3, stepMs: 100, failAt: 2 }, 'tenant=acme')
    const longId = await trigger(page, 'steps', { count: 10, stepMs: 1500 }, 'tenant=globex, region=eu')
    await trigger(page, 'sleep', { ms: 60000 })
    await page.waitForFunction((id) => /^[3-6]\/10/.test(document.querySelector(`#runs tr[data-run-id="${id}"] [data-testid="progress"]`)?.textContent ?? ''), longId, { timeout: 20_000 })
    await page.click(`#runs tr[data-run-id="${longId}"] td.job`)
    await waitDetailStatus(page, 'leased')
    await page.waitForFunction(() => document.querySelectorAll('#detail-logs li:not(.muted)').length >= 4)
    await page.waitForFunction(() => {
      const logs = document.querySelectorAll('#detail-logs li:not(.muted)').length
      return document.querySelectorAll('#detail-steps li[data-status]').length >= logs
    })
    await page.evaluate(() => document.activeElement?.blur())
    await shot(page, 'dashboard.png')

    // phone width: the table becomes cards, the detail a full screen
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true })
    const small = await phone.newPage()
    small.on('pageerror', (error) => pageErrors.push(String(error)))
    await small.goto(`${origin}/?view=runs`)
    await small.waitForSelector(`#runs tr[data-run-id="${longId}"]`)
    const width = await small.evaluate(() => document.documentElement.scrollWidth)
    check(width <= 390, `no horizontal scrolling at phone width (${width}px)`)
    await shot(small, 'phone-runs.png')
    await small.click(`#runs tr[data-run-id="${stepsId}"] td.job`)
    await waitDetailStatus(small, 'completed')
    await shot(small, 'phone-detail.png')
    await phone.close()

    // 7. pagination: 20 runs a page, "Load more" shows the next ones
    for (let i = 0; i < 23; i++) {
      const response = await fetch(`${api}/trigger`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ jobName: 'echo', input: { value: i }, labels: { batch: 'b1' } }),
      })
      check(response.ok, `trigger echo ${i}: ${response.status}`)
    }
    await page.goto(`${origin}/?label=batch%3Db1`)
    await page.waitForFunction(() => document.querySelectorAll('#runs tr').length === 20)
    check(await page.isVisible('[data-testid="load-more"]'), 'load more shown')
    await page.click('[data-testid="load-more"]')
    await page.waitForFunction(() => document.querySelectorAll('#runs tr').length === 23)
    check(!(await page.isVisible('[data-testid="load-more"]')), 'load more hidden at the end')

    // 7b. a waiting `approval` run: its wait is listed, and the form signals it (a payload
    // that is not JSON is refused in the page first); the run resumes and completes
    const approvalResponse = await fetch(`${api}/trigger`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jobName: 'approval', input: {} }),
    })
    const approvalId = (await approvalResponse.json()).runId
    await page.goto(`${origin}/?run=${approvalId}`)
    await waitDetailStatus(page, 'waiting')
    await page.waitForSelector('#detail-waits li[data-status="pending"] [data-testid="signal-form"]')
    await page.fill('[data-testid="signal-payload"]', '{"approved": tru')
    await page.click('[data-testid="signal-send"]')
    await page.waitForSelector('[data-testid="signal-form"] .error:not([hidden])')
    const notJson = await page.textContent('[data-testid="signal-form"] .error')
    check(notJson.includes('not JSON'), `payload refused in the page: ${notJson}`)
    await shot(page, 'approval-waiting.png')
    await page.fill('[data-testid="signal-payload"]', '{"approved": true, "by": "browser"}')
    await page.click('[data-testid="signal-send"]')
    await waitDetailStatus(page, 'completed')
    const approved = await (await fetch(`${api}/run?runId=${approvalId}`)).json()
    check(
      JSON.stringify(approved.output) === JSON.stringify({ approved: true, by: 'browser' }),
      `approval output: ${JSON.stringify(approved.output)}`,
    )
    await page.waitForSelector('#detail-waits li[data-status="resolved"]')
    check(!(await page.isVisible('[data-testid="signal-form"]')), 'no signal form once resolved')

    // 7c. child runs: `parent` invokes 3 children of `echo`; its page lists them, each with
    // its status and a link; a child's page shows its parent above it, linked
    const parentResponse = await fetch(`${api}/trigger`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jobName: 'parent', input: { children: 3 } }),
    })
    check(parentResponse.ok, `trigger parent: ${parentResponse.status}`)
    const parentId = (await parentResponse.json()).runId
    for (let i = 0; i < 300; i++) {
      const run = await (await fetch(`${api}/run?runId=${parentId}`)).json()
      if (run.isTerminal) {
        check(run.status === 'completed', `parent run ${run.status}: ${run.error}`)
        break
      }
      await sleep(100)
    }
    const childRuns = await (await fetch(`${api}/runs?parentRunId=${parentId}`)).json()
    check(childRuns.length === 3 && childRuns.every((c) => c.parentRunId === parentId && c.jobName === 'echo'), `children over HTTP: ${JSON.stringify(childRuns)}`)
    const childIds = childRuns.map((c) => c.id).sort()
    await page.goto(`${origin}/?run=${parentId}`)
    await waitDetailStatus(page, 'completed')
    await page.waitForFunction(() => document.querySelectorAll('#detail-tree [data-testid="tree-child"]').length === 3)
    const listedChildren = await page.$$eval('#detail-tree [data-testid="tree-child"]', (lis) =>
      lis.map((li) => ({ id: li.dataset.runId, status: li.querySelector('[data-testid="status"]')?.textContent, job: li.querySelector('.job')?.textContent, href: li.querySelector('a')?.getAttribute('href') })),
    )
    check(
      JSON.stringify(listedChildren.map((c) => c.id).sort()) === JSON.stringify(childIds) &&
        listedChildren.every((c) => c.status === 'completed' && c.job === 'echo' && c.href === `?run=${c.id}`),
      `children on the parent's page: ${JSON.stringify(listedChildren)}`,
    )
    check((await page.textContent('[data-testid="tree-count"]')).includes('3 children: 3 completed'), `children count: ${await page.textContent('[data-testid="tree-count"]')}`)
    check((await page.$$('#detail-tree [data-testid="tree-ancestor"]')).length === 0, 'a root run has no ancestors')
    // a child has no children of its own: expanding it says so
    await page.click('#detail-tree [data-testid="tree-child"] [data-testid="tree-expand"]')
    await page.waitForSelector('#detail-tree [data-testid="tree-none"]')
    await shot(page, 'run-children.png')
    // the child's page: its parent above it, linked; back to the parent by that link
    const firstChild = listedChildren[0].id
    await page.click(`#detail-tree li[data-run-id="${firstChild}"] a`)
    await page.waitForFunction((id) => document.querySelector('#detail-id')?.textContent === id, firstChild)
    check(new URL(page.url()).searchParams.get('run') === firstChild, `child in URL: ${page.url()}`)
    await page.waitForSelector('#detail-tree [data-testid="tree-parent"]')
    const parentLink = await page.$eval('#detail-tree [data-testid="tree-parent"]', (a) => ({ href: a.getAttribute('href'), title: a.title, job: a.closest('li').querySelector('.job').textContent }))
    check(parentLink.href === `?run=${parentId}` && parentLink.title === parentId && parentLink.job === 'parent', `parent link: ${JSON.stringify(parentLink)}`)
    check((await page.getAttribute('#detail-tree [data-testid="tree-self"]', 'data-run-id')) === firstChild, 'the child itself below its parent')
    check((await page.$$('#detail-tree [data-testid="tree-child"]')).length === 0, 'an echo child has no children')
    await shot(page, 'run-parent-link.png')
    await page.click('#detail-tree [data-testid="tree-parent"]')
    await page.waitForFunction((id) => document.querySelector('#detail-id')?.textContent === id, parentId)
    await page.waitForFunction(() => document.querySelectorAll('#detail-tree [data-testid="tree-child"]').length === 3)
    // a run without parent or children: nothing extra
    await page.goto(`${origin}/?run=${stepsId}`)
    await waitDetailStatus(page, 'completed')
    await sleep(300)
    check(await page.isHidden('[data-testid="detail-tree"]'), 'no tree for a run without parent or children')

    // 8. `durably serve` (no job definitions) over the same database
    const served = await start(['serve', '--db', db])
    serve = served.child
    await page.goto(`${served.origin}/?view=runs`)
    await page.waitForSelector('[data-testid="no-jobs"]:not([hidden])')
    check((await page.textContent('[data-testid="no-jobs"]')).includes('no job definitions'), 'no-jobs note')
    check(!(await page.isVisible('[data-testid="trigger-submit"]')), 'no trigger button without jobs')
    check(!(await page.isVisible('#trigger-job')), 'no job picker without jobs')
    await page.waitForSelector('#runs tr')
    // a deep link opens the run's detail
    await page.goto(`${served.origin}/?run=${stepsId}`)
    await waitDetailStatus(page, 'completed')
    await page.click('[data-testid="action-retrigger"]')
    await page.click('[data-testid="confirm-yes"]')
    await page.waitForSelector('#detail-error:not([hidden])')
    const refused = await page.textContent('#detail-error')
    check(refused.includes('no job definitions') && refused.includes('501'), `retrigger refusal: ${refused}`)
    await shot(page, 'serve-no-jobs.png')

    check(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`)
    console.log(`dashboard test: live progress ${JSON.stringify(live)}; sleep cancelled; filters ok`)
  } catch (error) {
    if (page && shots) await page.screenshot({ path: join(shots, 'failure.png') }).catch(() => {})
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
    console.log('dashboard test passed')
  },
  (error) => {
    console.error(error)
    process.exit(1)
  },
)
