// Aedes for the interop tests: node server.js PORT. Anonymous clients, in-memory state, 127.0.0.1 only.
'use strict'
const net = require('net')
const aedes = require('aedes')()

const port = Number(process.argv[2])
const server = net.createServer(aedes.handle)
server.listen(port, '127.0.0.1', () => console.log(`aedes ${require('aedes/package.json').version} listening on ${port}`))

function stop () {
  server.close()
  aedes.close(() => process.exit(0))
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
