// A job definition shared by the worker (which runs it) and the page (whose hooks name it):
// `{ name, run(step, input), retry? }`. The same object shape as upstream's `defineJob`.
export function defineJob(definition) {
  if (!definition || typeof definition.name !== 'string' || definition.name === '') {
    throw new TypeError('defineJob: name must be a non-empty string')
  }
  if (typeof definition.run !== 'function') {
    throw new TypeError(`defineJob(${definition.name}): run must be a function (step, input) => output`)
  }
  return definition
}
