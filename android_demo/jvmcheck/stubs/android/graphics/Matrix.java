package android.graphics;
public class Matrix { public boolean postScale(float sx, float sy) { return true; } public boolean postRotate(float d) { return true; } }
