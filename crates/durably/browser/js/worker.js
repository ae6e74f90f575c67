// The worker side of durably-browser: runs inside a dedicated Web Worker, owns the engine and
// the SQLite database (OPFS), runs the registered jobs, and answers `connectDurably(worker)`
// on the page (requests by postMessage, events forwarded per subscribed type).
import init, { createDurably } from './durably.js'

const METHODS = new Set(['trigger', 'getRun', 'getRuns', 'cancel', 'retrigger', 'deleteRun'])
const JOB_METHODS = new Set(['trigger', 'batchTrigger', 'getRun', 'getRuns'])

/**
 * Opens the database, retrying while another worker (the page before a reload, another tab)
 * holds the origin's OPFS pool.
 */
async function open(options, openTimeoutMs) {
  const deadline = Date.now() + openTimeoutMs
  for (;;) {
    try {
      return await createDurably(options)
    } catch (error) {
      const held = /NoModificationAllowedError|Access Handles cannot be created/.test(messageOf(error))
      if (!options.opfs || !held || Date.now() >= deadline) throw error
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
}

function messageOf(error) {
  return error instanceof Error ? error.message : String(error)
}

/** See worker.d.ts. */
export function startDurablyWorker(options = {}) {
  const { jobs = {}, wasm, openTimeoutMs = 10000, ...durablyOptions } = options
  const scope = globalThis
  const ready = (async () => {
    await init(wasm === undefined ? undefined : { module_or_path: wasm })
    const durably = (await open(durablyOptions, openTimeoutMs)).register(jobs)
    await durably.init()
    return durably
  })()
  // The job handles by job name (the page's client names jobs, not keys).
  const handles = ready.then(
    (durably) => new Map(Object.values(durably.jobs).map((handle) => [handle.name, handle])),
    () => new Map(), // the start's error is reported once, below, and to every call
  )
  // The unsubscribe functions of the event types the page listens to.
  const subscribed = new Map()
  scope.addEventListener('message', async (message) => {
    const data = message.data
    if (!data || typeof data !== 'object' || typeof data.durably !== 'string') return
    let durably
    try {
      durably = await ready
    } catch (error) {
      if (data.durably === 'call') {
        scope.postMessage({ durably: 'result', id: data.id, ok: false, error: messageOf(error) })
      }
      return
    }
    if (data.durably === 'on') {
      if (subscribed.has(data.type)) return
      try {
        const off = durably.on(data.type, (event) => scope.postMessage({ durably: 'event', type: data.type, event }))
        subscribed.set(data.type, off)
      } catch (error) {
        console.error(`durably-browser: ${messageOf(error)}`)
      }
    } else if (data.durably === 'off') {
      subscribed.get(data.type)?.()
      subscribed.delete(data.type)
    } else if (data.durably === 'call') {
      try {
        let value
        if (data.method === 'job') {
          const [name, method, ...args] = data.args
          const handle = (await handles).get(name)
          if (!handle) throw new Error(`durably-browser: the worker has no job "${name}" (pass it to startDurablyWorker's jobs)`)
          if (!JOB_METHODS.has(method)) throw new Error(`durably-browser: unknown job handle method ${method}`)
          value = await handle[method](...args)
        } else {
          if (!METHODS.has(data.method)) throw new Error(`durably-browser: unknown method ${data.method}`)
          value = await durably[data.method](...data.args)
        }
        scope.postMessage({ durably: 'result', id: data.id, ok: true, value })
      } catch (error) {
        scope.postMessage({ durably: 'result', id: data.id, ok: false, error: messageOf(error) })
      }
    }
  })
  ready.then(
    () => scope.postMessage({ durably: 'ready' }),
    (error) => scope.postMessage({ durably: 'failed', error: messageOf(error) }),
  )
  return ready
}
