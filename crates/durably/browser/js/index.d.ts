export * from './client.js'
export * from './job.js'
