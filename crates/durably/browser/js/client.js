// The page side of durably-browser: an object shaped like upstream's instance as the
// `@coji/durably-react/spa` hooks use it, whose calls go to the worker started by
// `startDurablyWorker` (worker.js) and whose `on` listeners receive the worker's events.
/** See client.d.ts. */
export function connectDurably(worker) {
  let nextId = 1
  const pending = new Map()
  const listeners = new Map()
  let settle
  const ready = new Promise((resolve, reject) => {
    settle = { resolve, reject }
  })

  worker.addEventListener('message', (message) => {
    const data = message.data
    if (!data || typeof data !== 'object') return
    if (data.durably === 'event') {
      for (const listener of listeners.get(data.type) ?? []) {
        try {
          listener(data.event)
        } catch (error) {
          // A listener that throws is the page's bug; it must not stop the others.
          setTimeout(() => {
            throw error
          })
        }
      }
    } else if (data.durably === 'result') {
      const call = pending.get(data.id)
      if (!call) return
      pending.delete(data.id)
      if (data.ok) call.resolve(data.value)
      else call.reject(new Error(data.error))
    } else if (data.durably === 'ready') {
      settle.resolve()
    } else if (data.durably === 'failed') {
      settle.reject(new Error(`durably worker failed to start: ${data.error}`))
    }
  })
  // An uncaught error in the worker (its script failed to load, or the engine trapped): the
  // worker cannot be trusted to answer any more, so every waiting call rejects, and so does
  // every later one, saying why.
  let broken = null
  worker.addEventListener('error', (event) => {
    const reason = event.message || 'an uncaught error (see the worker\'s console)'
    broken = `the durably worker failed: ${reason}`
    settle.reject(new Error(`durably worker failed to load or start: ${reason}`))
    for (const [, call] of pending) call.reject(new Error(`${broken}; ${call.method} got no answer`))
    pending.clear()
  })

  const call = (method, ...args) =>
    new Promise((resolve, reject) => {
      if (broken) return reject(new Error(`${broken}; ${method} was not sent`))
      const id = nextId++
      pending.set(id, { resolve, reject, method: method === 'job' ? `${args[0]}.${args[1]}` : method })
      worker.postMessage({ durably: 'call', id, method, args })
    })

  // One handle per job name, as upstream gives one per definition.
  const handles = new Map()
  const handle = (name) => {
    let handle = handles.get(name)
    if (!handle) {
      const job = (method, ...args) => call('job', name, method, ...args)
      handle = {
        name,
        trigger: (input, options) => job('trigger', input ?? null, options ?? null),
        batchTrigger: (items) => job('batchTrigger', items),
        getRun: (id) => job('getRun', id),
        getRuns: (filter) => job('getRuns', filter ?? null),
      }
      handles.set(name, handle)
    }
    return handle
  }

  const methods = {
    on(type, listener) {
      let set = listeners.get(type)
      if (!set) {
        set = new Set()
        listeners.set(type, set)
        worker.postMessage({ durably: 'on', type })
      }
      set.add(listener)
      return () => {
        // The worker stops forwarding a type once no listener of it remains on this page.
        if (set.delete(listener) && set.size === 0 && listeners.get(type) === set) {
          listeners.delete(type)
          worker.postMessage({ durably: 'off', type })
        }
      }
    },
    trigger: (jobName, input, options) => call('trigger', jobName, input ?? null, options ?? null),
    getRun: (id) => call('getRun', id),
    getRuns: (filter) => call('getRuns', filter ?? null),
    cancel: (id) => call('cancel', id),
    retrigger: (id) => call('retrigger', id),
    deleteRun: (id) => call('deleteRun', id),
  }
  // Like upstream's instance: `register` returns another one whose `jobs` adds the new handles.
  const instance = (jobs) => ({
    ...methods,
    jobs,
    register(definitions) {
      const added = { ...jobs }
      for (const [key, definition] of Object.entries(definitions)) {
        const name = definition?.name
        if (typeof name !== 'string') throw new TypeError(`register: ${key} must be a job definition { name, run }`)
        added[key] = handle(name)
      }
      return instance(added)
    },
  })
  const client = instance({})
  return ready.then(() => client)
}
