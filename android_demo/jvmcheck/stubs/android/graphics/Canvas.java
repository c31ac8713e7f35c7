package android.graphics;
public class Canvas { public Canvas(Bitmap b) {} public void drawColor(int c) {} public void drawBitmap(Bitmap b, float l, float t, Paint p) {} }
