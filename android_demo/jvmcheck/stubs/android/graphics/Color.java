package android.graphics;
public class Color { public static final int WHITE = -1; public static int rgb(int r, int g, int b) { return 0; } }
