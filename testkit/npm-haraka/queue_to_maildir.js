'use strict'
// The test Haraka's delivery: each accepted message is written, as received (with the
// headers plugins added), into <HARAKA_MAILDIRS>/<local part>/new/ of every recipient, so
// a test reads what each recipient got as it does from Postfix's and Exim's maildirs.
const fs = require('node:fs')
const path = require('node:path')

exports.hook_queue = function (next, connection) {
  const txn = connection.transaction
  txn.message_stream.get_data((raw) => {
    try {
      for (const rcpt of txn.rcpt_to) {
        const dir = path.join(process.env.HARAKA_MAILDIRS, rcpt.user, 'new')
        fs.mkdirSync(dir, { recursive: true })
        fs.writeFileSync(path.join(dir, `${txn.uuid}.eml`), raw)
      }
      next(OK)
    } catch (err) {
      next(DENYSOFT, `test delivery failed: ${err.message}`)
    }
  })
}
