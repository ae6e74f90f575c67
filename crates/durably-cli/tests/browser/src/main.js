// A small page built with the published @coji/durably-react in fullstack mode (HTTP + SSE to
// the server under /api/durably). No JSX, so a plain esbuild bundle is all it needs.
import { createElement as h, useEffect } from 'react'
import { createRoot } from 'react-dom/client'
import { createDurably } from '@coji/durably-react'

const durably = createDurably({ api: '/api/durably' })

// Every (status, progress) the hooks went through, for the test to inspect.
window.__seen = { steps: [], sleep: [] }

function Field({ id, value }) {
  return h('div', null, `${id}: `, h('span', { 'data-testid': id }, value ?? ''))
}

function StepsPanel() {
  const job = durably.steps.useJob({ autoResume: false })
  const progress = job.progress ? `${job.progress.current}/${job.progress.total}` : ''
  useEffect(() => {
    window.__seen.steps.push({ status: job.status, progress })
  }, [job.status, progress])
  return h(
    'section',
    null,
    h('h2', null, 'steps'),
    h('button', { 'data-testid': 'steps-trigger', onClick: () => job.trigger({ count: 5, stepMs: 300 }) }, 'trigger steps'),
    h(Field, { id: 'steps-run', value: job.currentRunId }),
    h(Field, { id: 'steps-status', value: job.status }),
    h(Field, { id: 'steps-progress', value: progress }),
    h(Field, { id: 'steps-message', value: job.progress?.message }),
    h(Field, { id: 'steps-output', value: job.output ? JSON.stringify(job.output) : '' }),
    h(Field, { id: 'steps-logs', value: String(job.logs.length) }),
  )
}

function SleepPanel() {
  const job = durably.sleep.useJob({ autoResume: false })
  const actions = durably.useRunActions()
  useEffect(() => {
    window.__seen.sleep.push({ status: job.status })
  }, [job.status])
  return h(
    'section',
    null,
    h('h2', null, 'sleep'),
    h('button', { 'data-testid': 'sleep-trigger', onClick: () => job.trigger({ ms: 60000 }) }, 'trigger sleep'),
    h(
      'button',
      {
        'data-testid': 'sleep-cancel',
        disabled: !job.currentRunId,
        onClick: () => actions.cancel(job.currentRunId),
      },
      'cancel sleep',
    ),
    h(Field, { id: 'sleep-run', value: job.currentRunId }),
    h(Field, { id: 'sleep-status', value: job.status }),
  )
}

function RunsPanel() {
  const { runs } = durably.useRuns({ pageSize: 5 })
  return h(
    'section',
    null,
    h('h2', null, 'runs'),
    h(
      'ul',
      { 'data-testid': 'runs' },
      runs.map((run) => h('li', { key: run.id, 'data-status': run.status }, `${run.jobName} ${run.status}`)),
    ),
  )
}

createRoot(document.getElementById('root')).render(
  h('main', null, h(StepsPanel), h(SleepPanel), h(RunsPanel)),
)
