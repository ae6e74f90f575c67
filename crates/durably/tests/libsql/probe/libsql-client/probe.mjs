// Does @libsql/client talk to a Hrana server? Usage: node probe.mjs http://127.0.0.1:PORT
// A loopback proxy in between prints every request and the server's answer; the client then
// runs an execute, a write batch and an interactive transaction, and prints what each returned.
import http from 'node:http'
import { createClient } from '@libsql/client'

const target = new URL(process.argv[2] ?? 'http://127.0.0.1:8080')
const proxy = http.createServer((req, res) => {
  let body = ''
  req.on('data', (chunk) => (body += chunk))
  req.on('end', () => {
    const headers = { ...req.headers, host: target.host }
    const upstream = http.request(
      { host: target.hostname, port: target.port, path: req.url, method: req.method, headers },
      (answer) => {
        let out = ''
        answer.on('data', (chunk) => (out += chunk))
        answer.on('end', () => {
          console.log(`>> ${req.method} ${req.url} ${body}\n<< ${answer.statusCode} ${out.slice(0, 300)}`)
          res.writeHead(answer.statusCode, answer.headers)
          res.end(out)
        })
      },
    )
    upstream.on('error', (e) => res.writeHead(502).end(String(e)))
    upstream.end(body)
  })
})
await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve))
const client = createClient({ url: `http://127.0.0.1:${proxy.address().port}` })
const step = async (name, run) => {
  try {
    console.log(`${name} => ${JSON.stringify(await run())}`)
  } catch (e) {
    console.log(`${name} FAILED: ${e.code} ${e.message}`)
  }
}
await step('execute', () => client.execute('select 1 as one'))
await step('execute with an argument', () => client.execute({ sql: 'select ? as a', args: [42] }))
await step('write batch', () =>
  client.batch(['create table if not exists probe(a)', { sql: 'insert into probe values (?)', args: [1] }], 'write'),
)
await step('transaction', async () => {
  const tx = await client.transaction('write')
  await tx.execute('insert into probe values (2)')
  await tx.commit()
  return 'committed'
})
client.close()
proxy.close()
