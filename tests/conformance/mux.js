// Mints a Mux signed-playback token with Mux's own Node SDK, for tests/it/conformance.rs.
// Usage: NODE_PATH=... node mux.js < inputs.json   (prints the token)
const Mux = require('@mux/mux-node');

let input = '';
process.stdin.on('data', (chunk) => (input += chunk));
process.stdin.on('end', async () => {
  const i = JSON.parse(input);
  const mux = new Mux({ tokenId: 'unused', tokenSecret: 'unused' });
  const token = await mux.jwt.signPlaybackId(i.playback_id, {
    keyId: i.key_id,
    keySecret: i.key_base64,
    type: i.type,
    expiration: '7d',
  });
  console.log(token);
});
