let sink = 0;
function hotA() { let x = 0; for (let i = 0; i < 7000000; i++) { x = (x + i * 31) ^ (x >>> 3); } sink += x; }
function hotB() { let x = 0; for (let i = 0; i < 3000000; i++) { x = (x + i * 31) ^ (x >>> 3); } sink += x; }
function main() { const end = Date.now() + Number(process.argv[2]); while (Date.now() < end) { hotA(); hotB(); } }
main();
