public class Hot {
    static volatile long sink;
    static void hotA() { long x = 0; for (long i = 0; i < 7_000_000L; i++) { x += i * 31 ^ (x >>> 3); } sink += x; }
    static void hotB() { long x = 0; for (long i = 0; i < 3_000_000L; i++) { x += i * 31 ^ (x >>> 3); } sink += x; }
    public static void main(String[] args) throws Exception {
        long end = System.nanoTime() + Long.parseLong(args[0]) * 1_000_000L;
        while (System.nanoTime() < end) { hotA(); hotB(); }
    }
}
