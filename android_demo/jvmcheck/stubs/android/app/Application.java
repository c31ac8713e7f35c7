package android.app;
public class Application extends android.content.Context {
  public android.content.res.AssetManager getAssets() { return new android.content.res.AssetManager(); }
  public String getPackageName() { return "io.github.tinytl.demo"; }
  public java.io.File getCacheDir() { return null; }
  public java.io.File getFilesDir() { return null; }
  public android.content.ContentResolver getContentResolver() { return null; }
}
