// The jobs of the SPA test page (spa.mjs), shared by the page (whose hooks name them) and the
// worker (which runs them). Every execution of a step's function is recorded in the origin's
// Cache Storage (which survives reloads), for the test to count.
import { defineJob } from 'durably-browser'

const CACHE = 'durably-spa-test'
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function record(stepName) {
  const cache = await caches.open(CACHE)
  await cache.put(`/exec/${stepName}/${crypto.randomUUID()}`, new Response(String(Date.now())))
}

/** Resolves once the test put `/release` in the cache (spa.mjs); fails after 60 s. */
async function released() {
  const cache = await caches.open(CACHE)
  for (let i = 0; i < 1200; i++) {
    if (await cache.match('/release')) return
    await sleep(50)
  }
  throw new Error('step "second" was not released within 60 s')
}

// Three steps; the second waits until the test releases it, so the page can be reloaded
// while it runs.
export const resumable = defineJob({
  name: 'resumable',
  run: async (step, input) => {
    const first = await step.run('first', async () => {
      await record('first')
      await step.log.info('first ran')
      return input.start + 1
    })
    await step.progress(1, 3, 'first done')
    const second = await step.run('second', async () => {
      await record('second')
      await step.log.info('second waiting')
      await released()
      return first + 1
    })
    await step.progress(2, 3, 'second done')
    const third = await step.run('third', async () => {
      await record('third')
      await step.log.info('third ran')
      return second + 1
    })
    await step.progress(3, 3, 'all done')
    return { total: third }
  },
})

// One step, for the figures (time to the first completed run, throughput).
export const quick = defineJob({
  name: 'quick',
  run: (step, input) => step.run('only', () => input.n),
})
