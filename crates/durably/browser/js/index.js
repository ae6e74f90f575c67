export { connectDurably } from './client.js'
export { defineJob } from './job.js'
