// Upload one file to a tus endpoint with tus-js-client, as a Node program would.
// usage: node upload.js <endpoint> <file> [chunkSize]
// Prints {"url", "file_id"} on success; the File-Id header is the stored file's SHA-256.
'use strict'
const fs = require('fs')
const path = require('path')
const { Upload } = require('tus-js-client')

const [endpoint, file, chunkSize] = process.argv.slice(2)
const upload = new Upload(fs.readFileSync(file), {
  endpoint,
  chunkSize: chunkSize ? Number(chunkSize) : Infinity,
  // Retry for as long as each attempt makes progress (the counter restarts after progress).
  retryDelays: Array(100).fill(200),
  metadata: { filename: path.basename(file), filetype: 'video/mp4' },
  onSuccess ({ lastResponse }) {
    console.log(JSON.stringify({ url: upload.url, file_id: lastResponse.getHeader('File-Id') }))
  },
  onError (err) {
    console.error(String(err))
    process.exit(1)
  },
})
upload.start()
