// What the dashboard's browser tests (dashboard.mjs, overview.mjs) share: the binary and
// Chromium they drive, assertions, starting and stopping `durably demo`/`serve` on a free port,
// and screenshots (kept when SCREENSHOTS names a directory).
import { chromium } from 'playwright-core'
import { spawn } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'

export const bin = process.env.DURABLY_BIN
export const executablePath = process.env.CHROMIUM || '/usr/bin/chromium'
export const shots = process.env.SCREENSHOTS
if (shots) mkdirSync(shots, { recursive: true })

/** Ends the process with a failure if the test runs longer than `ms`. */
export function watchdog(name, ms) {
  return setTimeout(() => {
    console.error(`${name}: timed out after ${ms / 1000} s`)
    process.exit(1)
  }, ms)
}

export function check(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`)
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Starts `durably ARGS --port 0`; resolves with the child and the origin it printed. */
export async function start(args) {
  if (!bin) throw new Error('DURABLY_BIN must name the durably binary')
  const child = spawn(bin, [...args, '--port', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const lines = createInterface({ input: child.stdout })
  const origin = await new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`durably demo exited early (${code})`)))
    lines.on('line', (line) => {
      const match = line.match(/http:\/\/[^\s/]+/)
      if (match) resolve(match[0])
    })
  })
  return { child, origin }
}

/** Stops a child started by `start` as Ctrl-C would, and waits for it to exit. */
export async function stop(child) {
  if (child.exitCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGINT')
  await exited
}

export async function shot(page, name) {
  if (shots) await page.screenshot({ path: join(shots, name), fullPage: false })
}

// Headless Debian chromium with one page of `width` x 860 px; page errors and console errors
// (other than failed loads and closed event streams) are collected in `pageErrors`.
export async function openPage(width) {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  })
  const context = await browser.newContext({ viewport: { width, height: 860 }, colorScheme: 'light' })
  const page = await context.newPage()
  const pageErrors = []
  page.on('pageerror', (error) => pageErrors.push(String(error)))
  page.on('console', (message) => {
    if (message.type() === 'error' && !/Failed to load resource|EventSource/.test(message.text())) pageErrors.push(message.text())
  })
  return { browser, page, pageErrors }
}

/**
 * A bounded wait on `page`: `until(what, predicate, arg)` resolves once `predicate(arg)` holds
 * in the page (polled every 50 ms) and fails after `waitMs` saying what it waited for, with the
 * page's text and the errors collected in `pageErrors`.
 */
export function waiter(page, pageErrors, waitMs) {
  return async function until(what, predicate, arg) {
    try {
      await page.waitForFunction(predicate, arg, { timeout: waitMs, polling: 50 })
    } catch (error) {
      const body = await page.locator('body').innerText().catch(() => '(no page)')
      throw new Error(`waited ${waitMs / 1000} s for ${what}: ${error.message.split('\n')[0]}\npage:\n${body}\npage errors: ${JSON.stringify(pageErrors)}`)
    }
  }
}
